"""Call credentials: metadata a plugin adds to every call, as grpc's
``access_token_call_credentials`` / ``metadata_call_credentials`` / ``composite_*``.

grpc's own call credentials objects keep their plugin inside grpcio's C core, out of
Python's reach, so lanerpc can't run them on its lanes. ``rpc.``'s functions of the same
names and signatures make objects that are grpc call credentials too (they carry the
object grpc would make, so a ``grpc://`` channel takes them), and that lanerpc runs
itself: each plugin is called on a thread of the default executor (a plugin may block,
as grpc allows), with grpc's ``AuthMetadataContext``; its metadata joins the call's.

As grpc does, they are sent only where the channel is secure: a TLS channel
(``rpc.secure_channel`` with ``rpc.ssl_channel_credentials``), a channel of local
credentials (``rpc.local_channel_credentials``), or a ``unix:`` target (the kernel
vouches for the peer). Elsewhere a call with them raises ``UsageError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

import grpc

Plugin = Any        # a grpc.AuthMetadataPlugin: plugin(context, callback)


class _Context(NamedTuple):
    """What grpc hands a plugin (a grpc.AuthMetadataContext)."""
    service_url: str
    method_name: str


class PluginError(Exception):
    """A plugin failed; the call ends UNAVAILABLE with this message, as in grpc."""


class CallCredentials(grpc.CallCredentials):
    """Call credentials lanerpc can run; also grpc's (``inner``) for grpcio channels."""

    def __init__(self, plugins: Sequence[Plugin], inner: grpc.CallCredentials) -> None:
        super().__init__(inner._credentials)  # type: ignore[attr-defined]  # private in the stubs
        self.plugins = tuple(plugins)


class CompositeChannelCredentials(grpc.ChannelCredentials):
    """Channel credentials with call credentials that go with every call."""

    def __init__(self, channel: grpc.ChannelCredentials, call: CallCredentials,
                 inner: grpc.ChannelCredentials) -> None:
        super().__init__(inner._credentials)  # type: ignore[attr-defined]
        self.channel = channel
        self.call = call


class _AccessToken(grpc.AuthMetadataPlugin):
    """grpc's access-token plugin: ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def __call__(self, context: Any, callback: Any) -> None:
        callback(self._metadata, None)


def access_token_call_credentials(access_token: str) -> CallCredentials:
    if not isinstance(access_token, str):
        raise TypeError(f"access_token must be a str; got {type(access_token).__name__}")
    plugin = _AccessToken(access_token)
    return CallCredentials([plugin], grpc.metadata_call_credentials(plugin))


def metadata_call_credentials(metadata_plugin: Plugin, name: str | None = None) -> CallCredentials:
    if not callable(metadata_plugin):
        raise TypeError("metadata_plugin must be a grpc.AuthMetadataPlugin (callable)")
    return CallCredentials([metadata_plugin], grpc.metadata_call_credentials(metadata_plugin, name))


def _ours(credentials: Any, where: str) -> CallCredentials:
    if isinstance(credentials, CallCredentials):
        return credentials
    raise TypeError(
        f"{where}: {credentials!r} is grpc's own call credentials object, whose plugin "
        f"lanerpc can't reach; make it with rpc.access_token_call_credentials, "
        f"rpc.metadata_call_credentials or rpc.composite_call_credentials")


def composite_call_credentials(*call_credentials: grpc.CallCredentials) -> CallCredentials:
    ours = [_ours(c, "composite_call_credentials") for c in call_credentials]
    return CallCredentials([p for c in ours for p in c.plugins],
                           grpc.composite_call_credentials(*ours))


def composite_channel_credentials(channel_credentials: grpc.ChannelCredentials,
                                  *call_credentials: grpc.CallCredentials) -> CompositeChannelCredentials:
    call = composite_call_credentials(*call_credentials)
    return CompositeChannelCredentials(
        channel_credentials, call,
        grpc.composite_channel_credentials(channel_credentials, *call_credentials))


def check(credentials: Any) -> CallCredentials:
    """A call's ``credentials=``: lanerpc's, or TypeError naming the functions."""
    return _ours(credentials, "credentials")


async def metadata(credentials: Sequence[CallCredentials], service_url: str,
                   method_name: str) -> tuple[tuple[str, str], ...]:
    """Every plugin's metadata, in order; PluginError when one fails."""
    loop = asyncio.get_running_loop()
    context = _Context(service_url, method_name)
    out: list[tuple[str, str]] = []
    for creds in credentials:
        for plugin in creds.plugins:
            out.extend(await _run(loop, plugin, context))
    return tuple(out)


async def _run(loop: asyncio.AbstractEventLoop, plugin: Plugin,
               context: _Context) -> Sequence[tuple[str, str]]:
    answer: asyncio.Future[tuple[Any, Any]] = loop.create_future()

    def callback(metadata: Any, error: Any) -> None:       # any thread, now or later
        loop.call_soon_threadsafe(_settle, answer, metadata, error)

    try:
        await loop.run_in_executor(None, plugin, context, callback)
    except Exception as exc:
        raise PluginError(f"Getting metadata from plugin failed with error: {exc!r}") from exc
    metadata_, error = await answer
    if error is not None:
        raise PluginError(f"Getting metadata from plugin failed with error: {error}")
    return tuple((str(k), v) for k, v in (metadata_ or ()))


def _settle(answer: asyncio.Future[tuple[Any, Any]], metadata: Any, error: Any) -> None:
    if not answer.done():
        answer.set_result((metadata, error))
