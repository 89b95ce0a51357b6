"""Fixtures: servers and channels on every active implementation, closed at teardown."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests._support import Served
from tests.conformance import conformance_pb2_grpc
from tests.conformance.impls import Impl, Options, active_impls
from tests.conformance.servicer import ConformanceServicer

Start = Callable[..., Awaitable[Served]]
Serve = Callable[..., Awaitable[tuple[ConformanceServicer, Any, Any]]]


@pytest.fixture(params=active_impls(), ids=lambda impl: impl.name)
def impl(request: pytest.FixtureRequest) -> Impl:
    return request.param


@pytest.fixture
async def start(impl: Impl) -> AsyncIterator[Start]:
    """A factory: ``await start(*servicers, options=(), **server_kwargs)`` serves any
    servicers (or registering functions) on ``impl`` and returns the
    :class:`~tests._support.Served`; open channels with ``connect``. Everything is
    closed and stopped at teardown, bounded, channels first."""
    async with contextlib.AsyncExitStack() as stack:
        async def start_(*servicers: Any, options: Options = (), **server_kwargs: Any) -> Served:
            return await stack.enter_async_context(impl.serve(*servicers, options=options, **server_kwargs))

        yield start_


@pytest.fixture
def connect(impl: Impl) -> Callable[..., Any]:
    """``connect(served, options=(), **channel_kwargs)``: an ``impl`` channel to
    ``served``, closed with it."""
    def connect_(served: Served, options: Options = (), **kwargs: Any) -> Any:
        return served.keep(impl.channel(served.target, options, **kwargs))

    return connect_


@pytest.fixture
async def serve(start: Start, connect: Callable[..., Any]) -> Serve:
    """A factory: ``await serve(server_options=(), channel_options=())`` starts a server
    with a fresh :class:`ConformanceServicer` and opens a channel to it; returns
    ``(servicer, stub, channel)``."""
    async def serve_(server_options: Options = (), channel_options: Options = ()):
        servicer = ConformanceServicer()
        channel = connect(await start(servicer, options=server_options), channel_options)
        return servicer, conformance_pb2_grpc.TestServiceStub(channel), channel

    return serve_


@pytest.fixture
async def server_and_channel(serve: Serve) -> tuple[ConformanceServicer, Any, Any]:
    """``(servicer, stub, channel)`` with default options."""
    return await serve()
