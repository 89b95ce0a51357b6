"""The server context's corners, as grpc.aio has them: the item type of
``invocation_metadata()``, the client's ``user-agent``, status codes given as ints,
``abort()`` twice or caught, the shapes ``set_trailing_metadata`` takes, a raising
done callback, and what ``peer()`` and ``auth_context()`` say.

Every case runs on grpc.aio (the reference) and on every lanerpc lane with the same
assertions; where only a lanerpc local lane has something to say (its peer's
credentials, the lane), the case asserts grpc's shape everywhere and the specifics
only where the implementation is such a lane."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import Any

import grpc
import pytest
from grpc import aio

import rpc
from examples.echo import echo_pb2_grpc
from tests._support import msg, wait_until, within

TIMEOUT = 5
LOCAL_LANES = ("unix", "shm", "memory", "pipe")


def is_local_lane(impl: Any) -> bool:
    """A lanerpc server reached by a lanerpc channel on a lane the kernel vouches for."""
    return impl.lanerpc_channel and impl.expected_lane in LOCAL_LANES


class Corners(echo_pb2_grpc.EchoServicer):
    """Unary does what its payload names and records what it saw in ``seen``."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.release = asyncio.Event()
        self.callbacks: list[str] = []
        self.callback_ran = asyncio.Event()

    async def Unary(self, request, context):
        action = request.payload.decode()
        return await getattr(self, "do_" + action.replace("-", "_"))(request, context)

    async def do_metadata(self, request, context):
        self.seen["metadata"] = context.invocation_metadata()
        return request

    async def do_identity(self, request, context):
        self.seen["peer"] = context.peer()
        self.seen["auth"] = context.auth_context()
        self.seen["identities"] = (context.peer_identities(), context.peer_identity_key())
        return request

    async def do_abort_int(self, request, context):
        await context.abort(5, "int code")

    async def do_abort_int_out_of_range(self, request, context):
        await context.abort(99, "no such code")

    async def do_set_code_int(self, request, context):
        context.set_code(5)
        context.set_details("set as int")
        self.seen["code"] = context.code()
        return request

    async def do_set_code_16(self, request, context):
        # grpc.aio maps ints past DATA_LOSS (15) to UNKNOWN: UNAUTHENTICATED's 16 too.
        context.set_code(16)
        return request

    async def do_abort_twice(self, request, context):
        try:
            await context.abort(grpc.StatusCode.NOT_FOUND, "first")
        except aio.AbortError:
            pass
        try:
            await context.abort(grpc.StatusCode.INTERNAL, "second")
        except Exception as exc:
            self.seen["second"] = exc
            raise

    async def do_abort_caught(self, request, context):
        try:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caught")
        except aio.AbortError:
            pass
        await within(self.release.wait())     # the client has the status by now
        return request

    async def do_abort_keeps_set(self, request, context):
        context.set_details("set before")
        context.set_trailing_metadata((("kept", "yes"),))
        await context.abort(grpc.StatusCode.NOT_FOUND)

    async def do_abort_trailing_none(self, request, context):
        await context.abort(grpc.StatusCode.NOT_FOUND, "d", None)

    async def do_trailing_shapes(self, request, context):
        results = {}
        for name, value in (("dict", {}), ("mapping", {"a": "b"}), ("none", None),
                            ("lists", [["a", "b"]]), ("int value", (("a", 1),)),
                            ("list", [("a", "b")]), ("metadata", aio.Metadata(("m", "v"))),
                            ("tuple", (("t", "v"),))):
            try:
                context.set_trailing_metadata(value)
                results[name] = "ok"
            except TypeError:
                results[name] = "TypeError"
        self.seen["trailing"] = results
        return request

    async def do_callbacks(self, request, context):
        def first(ctx: Any) -> None:
            self.callbacks.append("first")
            self.seen["callback_arg_is_context"] = ctx is context
            self.callback_ran.set()
            raise RuntimeError("done callback fails")

        def second(ctx: Any) -> None:
            self.callbacks.append("second")

        context.add_done_callback(first)
        context.add_done_callback(second)
        return request


    async def ServerStream(self, request, context):
        # abort-then-write: the write after a swallowed abort raises AbortError again.
        try:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, "stream aborted")
        except aio.AbortError:
            pass
        for name, attempt in (("write", lambda: context.write(request)),
                              ("send_initial_metadata", lambda: context.send_initial_metadata(()))):
            try:
                await attempt()
                self.seen[name] = "no error"
            except BaseException as exc:
                self.seen[name] = type(exc)
        yield request

    async def Bidi(self, request_iterator, context):
        try:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, "bidi aborted")
        except aio.AbortError:
            pass
        try:
            await context.read()
            self.seen["read"] = "no error"
        except BaseException as exc:
            self.seen["read"] = type(exc)
        yield msg(b"never sent")


class ThreadedCorners(echo_pb2_grpc.EchoServicer):
    """A plain (threaded) handler: its context's abort takes an int code too."""

    def Unary(self, request, context):
        if request.payload == b"abort":
            context.abort(7, "threaded")
        context.set_code(9)
        return request


async def corners(start, connect, options=()) -> tuple[Corners, Any, Any]:
    servicer = Corners()
    served = await start(servicer)
    return servicer, echo_pb2_grpc.EchoStub(connect(served, options)), served


async def unary_error(stub: Any, action: str) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        await stub.Unary(msg(action.encode()), timeout=TIMEOUT)
    return info.value


# -- invocation metadata ---------------------------------------------------------------

async def test_invocation_metadata_items_have_key_and_value(start, connect):
    servicer, stub, _ = await corners(start, connect)
    await stub.Unary(msg(b"metadata"), timeout=TIMEOUT,
                     metadata=(("k", "v"), ("b-bin", b"\x00\x01")))
    items = servicer.seen["metadata"]
    assert isinstance(items, tuple)
    for item in items:
        assert isinstance(item, tuple) and len(item) == 2
        key, value = item
        assert (item.key, item.value) == (key, value) == item
    assert ("k", "v") in items and ("b-bin", b"\x00\x01") in items
    assert [item.key for item in items].count("user-agent") == 1
    assert items[0].key == "user-agent"


class KeyReader(aio.ServerInterceptor):
    """Reads the items' ``.key``/``.value``, as OpenTelemetry's server interceptor does."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    async def intercept_service(self, continuation, handler_call_details):
        self.seen = [(item.key, item.value) for item in handler_call_details.invocation_metadata]
        return await continuation(handler_call_details)


async def test_interceptor_sees_items_with_key_and_value(start, connect):
    reader = KeyReader()
    servicer = Corners()
    served = await start(servicer, interceptors=[reader])
    stub = echo_pb2_grpc.EchoStub(connect(served))
    await stub.Unary(msg(b"metadata"), timeout=TIMEOUT, metadata=(("k", "v"),))
    assert ("k", "v") in reader.seen
    assert [key for key, _ in reader.seen].count("user-agent") == 1
    assert tuple(reader.seen) == tuple(servicer.seen["metadata"])


def user_agent(servicer: Corners) -> str:
    return dict(servicer.seen["metadata"])["user-agent"]


async def test_handler_sees_the_clients_user_agent(impl, start, connect):
    servicer, stub, _ = await corners(start, connect)
    # A call's own user-agent is not what the server sees: the client's transport sets it.
    await stub.Unary(msg(b"metadata"), timeout=TIMEOUT, metadata=(("user-agent", "mine/1"),))
    agent = user_agent(servicer)
    if impl.lanerpc_channel:
        assert agent.startswith(f"lanerpc-python/{rpc.__version__} ")
    else:
        assert agent.startswith("grpc-python-asyncio/")
    assert "mine/1" not in agent


async def test_primary_and_secondary_user_agent_options(start, connect):
    servicer, stub, _ = await corners(start, connect, options=(
        ("grpc.primary_user_agent", "front/1"), ("grpc.secondary_user_agent", "back/2")))
    await stub.Unary(msg(b"metadata"), timeout=TIMEOUT)
    agent = user_agent(servicer)
    assert agent.startswith("front/1 ") and agent.endswith(" back/2")
    assert re.search(r"(lanerpc|grpc)-python", agent)


# -- status codes ------------------------------------------------------------------------

async def test_abort_with_an_int_code(start, connect):
    _, stub, _ = await corners(start, connect)
    error = await unary_error(stub, "abort-int")
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "int code")
    error = await unary_error(stub, "abort-int-out-of-range")
    assert (error.code(), error.details()) == (grpc.StatusCode.UNKNOWN, "no such code")


async def test_set_code_with_an_int(start, connect):
    servicer, stub, _ = await corners(start, connect)
    error = await unary_error(stub, "set-code-int")
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "set as int")
    assert servicer.seen["code"] == 5 and type(servicer.seen["code"]) is int   # as given
    error = await unary_error(stub, "set-code-16")
    assert error.code() == grpc.StatusCode.UNKNOWN


async def test_threaded_handler_int_codes(start, connect):
    stub = echo_pb2_grpc.EchoStub(connect(await start(ThreadedCorners())))
    error = await unary_error(stub, "abort")
    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "threaded")
    error = await unary_error(stub, "set-code")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_second_abort_raises_and_the_first_status_stands(start, connect):
    servicer, stub, _ = await corners(start, connect)
    error = await unary_error(stub, "abort-twice")
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "first")
    # The status went out at the first abort: the handler may still be on its way to
    # the second when the client has it.
    await wait_until(lambda: "second" in servicer.seen)
    assert isinstance(servicer.seen["second"], aio.UsageError)


async def test_abort_is_sent_at_once_even_when_caught(start, connect):
    servicer, stub, _ = await corners(start, connect)
    try:
        error = await unary_error(stub, "abort-caught")
    finally:
        servicer.release.set()
    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "caught")


async def test_after_a_swallowed_abort_io_raises_abort_again(start, connect):
    servicer, stub, _ = await corners(start, connect)
    with pytest.raises(aio.AioRpcError) as info:
        [r async for r in stub.ServerStream(msg(b"x"), timeout=TIMEOUT)]
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.OUT_OF_RANGE, "stream aborted")
    with pytest.raises(aio.AioRpcError) as info:
        [r async for r in stub.Bidi(iter([msg(b"a")]), timeout=TIMEOUT)]
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.OUT_OF_RANGE, "bidi aborted")
    for name in ("write", "send_initial_metadata", "read"):
        assert isinstance(servicer.seen[name], type) and issubclass(servicer.seen[name], aio.AbortError), \
            (name, servicer.seen[name])


async def test_abort_keeps_details_and_trailing_set_before(start, connect):
    _, stub, _ = await corners(start, connect)
    error = await unary_error(stub, "abort-keeps-set")
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "set before")
    assert ("kept", "yes") in tuple(error.trailing_metadata())


async def test_abort_with_none_trailing_metadata_is_a_type_error(start, connect):
    _, stub, _ = await corners(start, connect)
    error = await unary_error(stub, "abort-trailing-none")
    assert error.code() == grpc.StatusCode.UNKNOWN
    assert "TypeError" in error.details()


async def test_set_trailing_metadata_takes_pairs_only(start, connect):
    servicer, stub, _ = await corners(start, connect)
    call = stub.Unary(msg(b"trailing-shapes"), timeout=TIMEOUT)
    await call
    assert servicer.seen["trailing"] == {
        "dict": "TypeError", "mapping": "TypeError", "none": "TypeError",
        "lists": "TypeError", "int value": "TypeError",
        "list": "ok", "metadata": "ok", "tuple": "ok"}
    assert tuple(await call.trailing_metadata()) == (("t", "v"),)


# -- done callbacks ------------------------------------------------------------------------

async def test_a_raising_done_callback_is_logged_and_ends_the_round(start, connect, caplog):
    servicer, stub, _ = await corners(start, connect)
    with caplog.at_level(logging.ERROR):
        assert (await stub.Unary(msg(b"callbacks"), timeout=TIMEOUT)).payload == b"callbacks"
        await within(servicer.callback_ran.wait())
        await asyncio.sleep(0.05)     # a callback after it would run in the same turn
    assert servicer.callbacks == ["first"]
    assert servicer.seen["callback_arg_is_context"]
    assert any(record.levelno == logging.ERROR and record.exc_info is not None
               and "done callback fails" in str(record.exc_info[1])
               for record in caplog.records)


# -- peer and auth context -------------------------------------------------------------

async def test_peer_is_spelled_as_grpc_does(impl, start, connect):
    servicer, stub, served = await corners(start, connect)
    await stub.Unary(msg(b"identity"), timeout=TIMEOUT)
    peer = servicer.seen["peer"]
    if impl.bind in ("tcp", "grpc"):
        # Also for a client moved to the unix or shm lane: the TCP connection it dialled.
        match = re.fullmatch(r"ipv4:127\.0\.0\.1:(\d+)", peer)
        assert match, peer
        assert 0 < int(match.group(1)) < 65536 and int(match.group(1)) != served.port
    elif impl.bind == "unix":
        assert peer == "unix:"    # the client's socket has no name
    else:
        assert peer


@pytest.mark.parametrize("dial", ["127.0.0.1", "[::1]"])
async def test_peer_of_a_dual_stack_port(impl, start, dial):
    """A server on ``[::]``: an IPv4 client is ``ipv4:`` (not the v4-mapped IPv6
    address), an IPv6 one ``ipv6:`` with the brackets percent-encoded, as grpc says it."""
    if impl.bind not in ("tcp", "grpc"):
        pytest.skip(f"{impl.name} serves on no TCP port")
    servicer = Corners()
    served = await start(servicer, address=f"{'grpc://' if impl.bind == 'grpc' else ''}[::]:0")
    channel = served.keep(impl.channel(f"{dial}:{served.port}", ()))
    await echo_pb2_grpc.EchoStub(channel).Unary(msg(b"identity"), timeout=TIMEOUT)
    pattern = r"ipv4:127\.0\.0\.1:\d+" if dial == "127.0.0.1" else r"ipv6:%5B::1%5D:\d+"
    assert re.fullmatch(pattern, servicer.seen["peer"]), servicer.seen["peer"]


async def test_auth_context_has_grpc_shape_and_local_credentials(impl, start, connect):
    servicer, stub, _ = await corners(start, connect)
    await stub.Unary(msg(b"identity"), timeout=TIMEOUT)
    auth = servicer.seen["auth"]
    assert all(isinstance(key, str) and isinstance(values, list)
               and all(isinstance(v, bytes) for v in values) for key, values in auth.items())
    grpc_keys = {key: auth[key] for key in ("transport_security_type", "security_level")}
    if impl.tls:
        # grpc's ssl credentials without a client certificate, on whichever lane the
        # TLS connection ended on (upgraded, it keeps its TLS properties).
        assert grpc_keys == {"transport_security_type": [b"ssl"],
                             "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"]}
        assert servicer.seen["identities"] == (None, None)
    elif is_local_lane(impl):
        # What grpc's local credentials say, plus the client's credentials and the lane.
        assert grpc_keys == {"transport_security_type": [b"local"],
                             "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"]}
        assert auth["lanerpc_peer_pid"] == [str(os.getpid()).encode()]
        assert auth["lanerpc_peer_uid"] == [str(os.geteuid()).encode()]
        assert auth["lanerpc_peer_gid"] == [str(os.getegid()).encode()]
        assert servicer.seen["identities"] == ([b"local"], "transport_security_type")
    else:
        # grpc.aio's insecure credentials, and lanerpc's tcp lane alike.
        assert grpc_keys == {"transport_security_type": [b"insecure"],
                             "security_level": [b"TSI_SECURITY_NONE"]}
        assert not any(key.startswith("lanerpc_peer_") for key in auth)
        assert servicer.seen["identities"] == (None, None)
    if impl.lanerpc_channel:
        assert auth["lanerpc_lane"] == [impl.expected_lane.encode()]
    else:
        assert "lanerpc_lane" not in auth

