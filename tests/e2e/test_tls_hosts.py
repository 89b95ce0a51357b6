"""mTLS between two "hosts": the client in a network namespace of its own joined by a
veth pair, with its own runtime dir and /dev/shm (so nothing of the server's host is
in reach: it must stay on TLS over TCP). Root only; skipped elsewhere."""

from __future__ import annotations

import json
import subprocess

import pytest

import rpc
from examples.echo import echo_pb2
from tests._support import Echo, serve
from tests._tls import certs
from tests.e2e.conftest import PYTHON, last_json, need_root_and, run_child
from tests.e2e.test_upgrade import _NetNamespace, _private_tmp, private_runtime_dir  # noqa: F401


class Who(Echo):
    """Answers with the client's identity and transport as the handler sees them."""

    async def Unary(self, request, context):
        with self._track():
            auth = context.auth_context()
            seen = {"type": auth["transport_security_type"][0].decode(),
                    "lane": auth["lanerpc_lane"][0].decode(),
                    "key": context.peer_identity_key(),
                    "ids": [value.decode() for value in context.peer_identities() or ()]}
            return echo_pb2.EchoMessage(payload=json.dumps(seen).encode())


@pytest.fixture
def other_host(private_runtime_dir):  # noqa: F811 - the fixture imported above
    need_root_and("ip", "unshare")
    try:
        netns = _NetNamespace().__enter__()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"can't make a network namespace here: {exc}")
    try:
        yield netns, ["ip", "netns", "exec", netns.name, *_private_tmp(private_runtime_dir)]
    finally:
        netns.__exit__()


@pytest.fixture
def cert_dir(tmp_path):
    made = certs()
    files = {"ca.pem": made.ca, "client.key": made.client.key, "client.pem": made.client.cert,
             "expired.key": made.expired.key, "expired.pem": made.expired.cert,
             "stranger.key": made.stranger.key, "stranger.pem": made.stranger.cert}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return str(tmp_path)


async def test_mtls_between_two_hosts(other_host, cert_dir):
    netns, prefix = other_host
    made = certs()
    creds = rpc.ssl_server_credentials([(made.server.key, made.server.cert)], made.ca, True)
    who = Who()
    async with serve(who, address="0.0.0.0:0", credentials=creds) as served:
        target = f"{netns.host_ip}:{served.port}"
        rc, out, err = await run_child(*prefix, PYTHON, "-m", "tests.e2e._tls_client",
                                       target, cert_dir, "client")
        assert rc == 0, err
        result = last_json(out)
        assert result["errors"] == [] and result["lane"] == "tcp"
        seen = json.loads(result["replies"][0])
        assert seen == {"type": "ssl", "lane": "tcp", "key": "x509_subject_alternative_name",
                        "ids": ["client.example", "spiffe://example.org/client"]}
        for client, reason in (("none", "certificate required"), ("expired", "bad certificate"),
                               ("stranger", "bad certificate")):
            rc, out, err = await run_child(*prefix, PYTHON, "-m", "tests.e2e._tls_client",
                                           target, cert_dir, client)
            assert rc == 0, err
            result = last_json(out)
            assert result["replies"] == []
            assert all(e.startswith("UNAVAILABLE") and reason in e for e in result["errors"])
        assert who.started_calls == 2
