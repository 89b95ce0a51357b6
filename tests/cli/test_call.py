"""``lanerpc call``: JSON in, JSON out, on every call kind; metadata, deadlines, TLS, the
lane; errors printed as grpcurl prints them, the status code as the exit code."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

import rpc
from tests import _tls
from tests._support import Echo, serve
from tests.cli._cli import (CLI_TIMEOUT, ECHO, assert_no_traceback, background, cli, lines,
                           with_reflection)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def request(payload: bytes) -> str:
    return json.dumps({"payload": b64(payload)})


def payloads(out: str) -> list[bytes]:
    """The payloads of the responses printed, one JSON object per line."""
    return [base64.b64decode(json.loads(line).get("payload", "")) for line in lines(out)]


async def test_unary_from_an_argument():
    async with serve(Echo(), with_reflection) as served:
        result = await cli("call", served.target, f"{ECHO}/Unary", request(b"hi"))
    assert (result.code, result.err) == (0, "")
    assert result.out == '{"payload": "aGk="}\n'


async def test_unary_from_stdin_and_from_a_file(tmp_path):
    (tmp_path / "request.json").write_text(request(b"from a file"))
    async with serve(Echo(), with_reflection) as served:
        piped = await cli("call", served.target, f"{ECHO}/Unary", stdin=request(b"piped").encode())
        dashed = await cli("call", "-d", "@-", served.target, f"{ECHO}/Unary",
                           stdin=request(b"dashed").encode())
        filed = await cli("call", "-d", f"@{tmp_path}/request.json", served.target, f"{ECHO}/Unary")
        empty = await cli("call", served.target, f"{ECHO}.Unary", "{}")
        defaults = await cli("call", "--emit-defaults", served.target, f"{ECHO}/Unary", "{}")
    assert payloads(piped.out) == [b"piped"]
    assert payloads(dashed.out) == [b"dashed"]
    assert payloads(filed.out) == [b"from a file"]
    assert (empty.code, empty.out) == (0, "{}\n")
    assert (defaults.code, defaults.out) == (0, '{"payload": ""}\n')


async def test_server_streaming_prints_a_line_per_response():
    async with serve(Echo(), with_reflection) as served:
        result = await cli("call", served.target, f"{ECHO}/ServerStream", request(b"n"))
    assert result.code == 0
    assert payloads(result.out) == [b"n0", b"n1", b"n2"]


async def test_client_streaming_sends_a_request_per_stdin_line():
    stdin = "\n".join([request(b"a"), "", request(b"b"), request(b"c")]).encode()
    async with serve(Echo(), with_reflection) as served:
        result = await cli("call", served.target, f"{ECHO}/ClientStream", stdin=stdin)
    assert result.code == 0
    assert payloads(result.out) == [b"abc"]


async def test_bidi_answers_each_line():
    stdin = (request(b"one") + "\n" + request(b"two") + "\n").encode()
    async with serve(Echo(), with_reflection) as served:
        result = await cli("call", served.target, f"{ECHO}/Bidi", stdin=stdin)
    assert result.code == 0
    assert payloads(result.out) == [b"one", b"two"]


async def test_bidi_sends_each_line_as_it_comes():
    async with serve(Echo(), with_reflection) as served:
        async with background("call", served.target, f"{ECHO}/Bidi", stdin_pipe=True) as process:
            assert process.stdin is not None and process.stdout is not None
            for word in (b"one", b"two"):
                process.stdin.write((request(word) + "\n").encode())
                answer = await asyncio.wait_for(process.stdout.readline(), CLI_TIMEOUT)
                assert payloads(answer.decode()) == [word]     # answered before stdin ends
            process.stdin.close()
            assert await asyncio.wait_for(process.wait(), CLI_TIMEOUT) == 0


class FirstOnly(Echo):
    """ClientStream answers the first request, reading no more."""

    async def ClientStream(self, request_iterator, context):
        async for message in request_iterator:
            return message


async def test_a_call_that_ends_before_stdin_does_ends_the_command():
    async with serve(FirstOnly(), with_reflection) as served:
        result = await cli("call", served.target, f"{ECHO}/ClientStream",
                           stdin=(request(b"first") + "\n").encode(), stdin_open=True)
    assert (result.code, result.err) == (0, "")
    assert payloads(result.out) == [b"first"]


async def test_metadata_reaches_the_handler():
    echo = Echo()
    async with serve(echo, with_reflection) as served:
        result = await cli("call", "-H", "x-team: blue", "-H", "X-Raw-Bin:" + b64(b"\x00\x01"),
                           served.target, f"{ECHO}/Unary", "{}")
    assert result.code == 0
    (seen,) = echo.seen_metadata
    assert ("x-team", "blue") in seen
    assert ("x-raw-bin", b"\x00\x01") in seen


async def test_a_failed_call_exits_with_its_code_printed_as_grpcurl_does():
    async with serve(Echo(), with_reflection) as served:
        result = await cli("call", served.target, f"{ECHO}/Unary", request(b"fail"))
    assert result.code == 9          # FAILED_PRECONDITION
    assert result.out == ""
    assert result.err == "ERROR:\n  Code: FailedPrecondition\n  Message: asked to fail\n"


async def test_timeout_is_the_deadline():
    async with serve(Echo(), with_reflection) as served:
        result = await cli("call", "--timeout", "0.5", served.target, f"{ECHO}/Unary",
                           request(b"sleep:5000"))
    assert result.code == 4
    assert result.err.startswith("ERROR:\n  Code: DeadlineExceeded\n")


async def test_verbose_prints_the_lane_headers_and_trailers():
    async with serve(Echo(), with_reflection, lanes="tcp") as served:
        streamed = await cli("call", "-v", served.target, f"{ECHO}/ServerStream",
                             request(b"stream:1:0"))
        trailed = await cli("call", "-v", served.target, f"{ECHO}/Unary", request(b"trailer:3"))
    assert streamed.code == 0
    assert payloads(streamed.out) == [b"0"]       # stdout holds the responses only
    assert streamed.err.startswith("lane: tcp\n\nResponse headers received:\nstarted: 1\n")
    assert "Response trailers received:\nbig: xxx\n" in trailed.err


async def test_verbose_names_the_lane_a_same_host_channel_moved_to(tmp_path):
    async with serve(Echo(), with_reflection, address=f"unix:{tmp_path}/s.sock",
                     lanes="unix") as served:
        result = await cli("call", "-v", served.target, f"{ECHO}/Unary", "{}")
    assert result.err.startswith("lane: unix\n")


@pytest.mark.parametrize("args, code, message", [
    ((f"{ECHO}/Nope", "{}"), 5, f"service {ECHO} has no method Nope"),
    (("no.Such/Method", "{}"), 5, "symbol no.Such not found"),
    ((f"{ECHO}/Unary", '{"payload": 1'), 64, "the request is not a lanerpc.echo.EchoMessage"),
    ((f"{ECHO}/Unary", '{"nope": 1}'), 64, 'has no field named "nope"'),
    ((f"{ECHO}/Unary", "{}", "-d", "{}"), 64, "the request is given twice"),
    (("Unary", "{}"), 64, "expected a method as pkg.Service/Method"),
    ((f"{ECHO}/Unary", "-H", "no-colon"), 64, "expected KEY:VALUE"),
    ((f"{ECHO}/Unary", "-d", "@/nonexistent/request.json"), 64, "No such file or directory"),
])
async def test_bad_input_is_one_clear_line(args, code, message):
    async with serve(Echo(), with_reflection) as served:
        result = await cli("call", served.target, *args)
    assert result.code == code
    assert message in result.err
    assert result.err.startswith("lanerpc call: ")
    assert_no_traceback(result)


async def test_a_bad_line_in_a_request_stream_ends_the_call():
    echo = Echo()
    stdin = (request(b"a") + "\nnot json\n").encode()
    async with serve(echo, with_reflection) as served:
        result = await cli("call", served.target, f"{ECHO}/ClientStream", stdin=stdin)
    assert result.code == 64
    assert result.err.startswith("lanerpc call: request 2 is not a lanerpc.echo.EchoMessage")
    assert_no_traceback(result)


async def test_an_unreachable_target_is_unavailable():
    async with serve(Echo()) as served:
        target = served.target
    result = await cli("call", target, f"{ECHO}/Unary", "{}")
    assert result.code == 14
    assert result.err.startswith("ERROR:\n  Code: Unavailable\n  Message: failed to connect")
    assert_no_traceback(result)


async def test_a_plain_grpc_server_through_grpc_scheme():
    async with serve(Echo(), with_reflection, plain_grpc=True) as served:
        result = await cli("call", f"grpc://{served.target}", f"{ECHO}/Unary", request(b"grpc"))
    assert result.code == 0
    assert payloads(result.out) == [b"grpc"]


async def test_tls_and_mutual_tls(tmp_path):
    certs = _tls.certs()
    files = {"ca": certs.ca, "key": certs.client.key, "cert": certs.client.cert}
    for name, pem in files.items():
        (tmp_path / name).write_bytes(pem)
    credentials = rpc.ssl_server_credentials([(certs.server_by_name.key, certs.server_by_name.cert)],
                                             root_certificates=certs.ca, require_client_auth=True)
    tls = ("--cacert", f"{tmp_path}/ca", "--authority", "localhost")
    mtls = (*tls, "--cert", f"{tmp_path}/cert", "--key", f"{tmp_path}/key")
    async with serve(Echo(), with_reflection, credentials=credentials) as served:
        ok = await cli("call", *mtls, served.target, f"{ECHO}/Unary", request(b"tls"))
        no_client_cert = await cli("call", *tls, served.target, f"{ECHO}/Unary", "{}")
        wrong_name = await cli("call", "--cacert", f"{tmp_path}/ca", "--cert", f"{tmp_path}/cert",
                               "--key", f"{tmp_path}/key", served.target, f"{ECHO}/Unary", "{}")
    assert (ok.code, payloads(ok.out)) == (0, [b"tls"])
    assert no_client_cert.code == 14
    assert "certificate required" in no_client_cert.err
    assert wrong_name.code == 14        # the certificate names localhost, not 127.0.0.1


async def test_tls_flags_that_make_no_sense_are_refused(tmp_path):
    (tmp_path / "ca").write_text("not a certificate")
    result = await cli("call", "--cacert", f"{tmp_path}/ca", "127.0.0.1:1", f"{ECHO}/Unary", "{}")
    assert (result.code, result.err) == (64, "lanerpc call: --cacert is not PEM (no -----BEGIN line)\n")
    result = await cli("call", "--authority", "x", "127.0.0.1:1", f"{ECHO}/Unary", "{}")
    assert (result.code, result.err) == (64, "lanerpc call: --authority names the server's "
                                              "certificate: it needs TLS (--tls or --cacert)\n")
    result = await cli("call", "--cert", "c.pem", "127.0.0.1:1", f"{ECHO}/Unary", "{}")
    assert (result.code, result.err) == (64, "lanerpc call: --cert and --key go together\n")
