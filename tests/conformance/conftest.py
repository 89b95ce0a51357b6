"""Fixtures: one server + channel per test, on every active implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conformance import conformance_pb2_grpc
from tests.conformance.impls import Impl, Options, active_impls
from tests.conformance.servicer import ConformanceServicer

# Upper bound for starting/stopping a server and closing a channel.
SETUP_TIMEOUT = 5.0

Serve = Callable[..., Awaitable[tuple[ConformanceServicer, Any, Any]]]


@pytest.fixture(params=active_impls(), ids=lambda impl: impl.name)
def impl(request: pytest.FixtureRequest) -> Impl:
    return request.param


@pytest.fixture
async def serve(impl: Impl) -> AsyncIterator[Serve]:
    """A factory: ``await serve(server_options=(), channel_options=())`` starts a server
    with a fresh :class:`ConformanceServicer` and opens a channel to it; returns
    ``(servicer, stub, channel)``. Everything it opened is closed at teardown, bounded."""
    cleanups: list[Callable[[], Awaitable[Any]]] = []

    async def start(
        server_options: Options = (), channel_options: Options = ()
    ) -> tuple[ConformanceServicer, Any, Any]:
        servicer = ConformanceServicer()
        server, target = await asyncio.wait_for(impl.start_server(servicer, server_options), SETUP_TIMEOUT)
        cleanups.append(lambda: server.stop(0))
        channel = impl.channel(target, channel_options)
        cleanups.append(channel.close)
        return servicer, conformance_pb2_grpc.TestServiceStub(channel), channel

    yield start

    errors = []
    for cleanup in reversed(cleanups):  # channels first, then servers
        try:
            await asyncio.wait_for(cleanup(), SETUP_TIMEOUT)
        except Exception as exc:  # keep closing the rest, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
async def server_and_channel(serve: Serve) -> tuple[ConformanceServicer, Any, Any]:
    """``(servicer, stub, channel)`` with default options."""
    return await serve()
