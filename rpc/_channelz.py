"""grpc's channelz service, answered with a lanerpc server's own counters.

A user turns channelz on the grpc way, ``grpc_channelz.v1.channelz.add_channelz_servicer
(server)``. grpc's servicer reads grpc core's registry, which knows nothing of lanerpc's
connections; so when an :class:`rpc.Server` is handed grpc's own channelz handlers it
serves these instead (a channelz servicer of the user's own is left alone). The grpcio
server behind ``grpc://`` ports keeps grpc's, which describes that grpcio server.

How lanerpc's counters map onto channelz's messages:

* ``GetServers`` / ``GetServer``: one server, id 1, ``ref.name`` "lanerpc". Its
  ``ServerData`` has ``calls_started`` (ended + running), ``calls_succeeded`` and
  ``calls_failed`` (status not OK); its trace holds one
  event whose description is ``lanerpc_stats`` and a JSON object: the SIGUSR1 snapshot
  (connections open and in total per lane, calls per lane, bytes in and out, errors by
  code). ``listen_socket`` is empty (lanerpc's listeners are not channelz sockets).
* ``GetServerSockets``: one socket per open lanerpc connection, ids from 1 in the order
  the server first saw them; ``ref.name`` is "<lane> <peer>".
* ``GetSocket``: that connection. ``security.other`` is named ``lanerpc_lane`` with
  the lane in a ``google.protobuf.StringValue``; ``data.streams_started`` /
  ``streams_succeeded`` / ``streams_failed`` count its calls; ``data.option`` has
  ``lanerpc_lane``, ``lanerpc_bytes_in`` and ``lanerpc_bytes_out``; ``remote_name`` is
  the peer as ``context.peer()`` names it. Messages are not counted per connection.
* ``GetTopChannels`` answers no channels; ``GetChannel`` and ``GetSubchannel`` NOT_FOUND.

Imported only when grpc's channelz handlers are registered (grpcio-channelz is there).
"""

from __future__ import annotations

import json
import time
import weakref
from typing import Any, Mapping, Protocol

import grpc
from google.protobuf import any_pb2, timestamp_pb2, wrappers_pb2

from rpc._stats import Stats
from rpc.transports import PeerInfo


class ServerLink(Protocol):
    """What is read of a server's connection (rpc._server.ServerLink)."""

    lane: str | None
    peer: PeerInfo | None
    dialled_as: str | None
    bytes_in: int
    bytes_out: int
    calls: dict[int, Any]


class Server(Protocol):
    """What is read of the server (rpc._server.Server): it imports this module."""

    _links: set[Any]
    _stats: Stats
    _active: int

SERVICE = "grpc.channelz.v1.Channelz"
SERVER_ID = 1
DEFAULT_MAX_RESULTS = 100
STATS_EVENT = "lanerpc_stats"


def is_grpcs(method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]) -> bool:
    """Whether these are grpc's own channelz handlers (add_channelz_servicer's)."""
    for handler in method_handlers.values():
        function = handler.unary_unary
        if function is None or not getattr(function, "__module__", "").startswith("grpc_channelz."):
            return False
    return bool(method_handlers)


class LanerpcChannelz:
    """The channelz service over one lanerpc server's counters."""

    def __init__(self, server: Server) -> None:
        from grpc_channelz.v1 import channelz_pb2

        self._pb = channelz_pb2
        self._server = server
        self._ids: weakref.WeakKeyDictionary[ServerLink, int] = weakref.WeakKeyDictionary()
        self._next_id = 1
        self._created = time.time()

    def handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        pb = self._pb
        methods = {
            "GetTopChannels": (self.get_top_channels, pb.GetTopChannelsRequest),
            "GetServers": (self.get_servers, pb.GetServersRequest),
            "GetServer": (self.get_server, pb.GetServerRequest),
            "GetServerSockets": (self.get_server_sockets, pb.GetServerSocketsRequest),
            "GetChannel": (self.not_found, pb.GetChannelRequest),
            "GetSubchannel": (self.not_found, pb.GetSubchannelRequest),
            "GetSocket": (self.get_socket, pb.GetSocketRequest),
        }
        return {name: grpc.unary_unary_rpc_method_handler(
                    function, request_deserializer=request.FromString,
                    response_serializer=lambda message: message.SerializeToString())
                for name, (function, request) in methods.items()}

    # ------------------------------------------------------------ the methods

    async def get_top_channels(self, request: Any, context: Any) -> Any:
        return self._pb.GetTopChannelsResponse(end=True)

    async def get_servers(self, request: Any, context: Any) -> Any:
        servers = [self._server_message()] if request.start_server_id <= SERVER_ID else []
        return self._pb.GetServersResponse(server=servers, end=True)

    async def get_server(self, request: Any, context: Any) -> Any:
        if request.server_id != SERVER_ID:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"No server with id {request.server_id}")
        return self._pb.GetServerResponse(server=self._server_message())

    async def get_server_sockets(self, request: Any, context: Any) -> Any:
        if request.server_id != SERVER_ID:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"No server with id {request.server_id}")
        limit = request.max_results if request.max_results > 0 else DEFAULT_MAX_RESULTS
        links = [(socket_id, link) for socket_id, link in self._numbered()
                 if socket_id >= request.start_socket_id]
        refs = [self._pb.SocketRef(socket_id=socket_id, name=_name(link))
                for socket_id, link in links[:limit]]
        return self._pb.GetServerSocketsResponse(socket_ref=refs, end=len(links) <= limit)

    async def get_socket(self, request: Any, context: Any) -> Any:
        for socket_id, link in self._numbered():
            if socket_id == request.socket_id:
                return self._pb.GetSocketResponse(socket=self._socket_message(socket_id, link))
        await context.abort(grpc.StatusCode.NOT_FOUND, f"No socket with id {request.socket_id}")

    async def not_found(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.NOT_FOUND,
                            "a lanerpc server's channelz describes its server and its connections")

    # ------------------------------------------------------------ the messages

    def _numbered(self) -> list[tuple[int, ServerLink]]:
        """The open connections with their ids, by id; a new one gets the next id."""
        out = []
        for link in list(self._server._links):
            socket_id = self._ids.get(link)
            if socket_id is None:
                socket_id = self._ids[link] = self._next_id
                self._next_id += 1
            out.append((socket_id, link))
        return sorted(out, key=lambda pair: pair[0])

    def _server_message(self) -> Any:
        pb = self._pb
        stats = self._server._stats
        snapshot = stats.snapshot()
        ended = sum(stats.calls.values())
        failed = sum(stats.codes.values())
        data = pb.ServerData(calls_started=ended + self._server._active,
                             calls_succeeded=ended - failed, calls_failed=failed)
        data.trace.creation_timestamp.CopyFrom(_timestamp(self._created))
        data.trace.num_events_logged = 1
        data.trace.events.add(description=f"{STATS_EVENT} {json.dumps(snapshot, sort_keys=True)}",
                              severity=pb.ChannelTraceEvent.CT_INFO,
                              timestamp=_timestamp(time.time()))
        return pb.Server(ref=pb.ServerRef(server_id=SERVER_ID, name="lanerpc"), data=data)

    def _socket_message(self, socket_id: int, link: ServerLink) -> Any:
        pb = self._pb
        lane = link.lane or "?"
        succeeded, failed = self._server._stats.calls_of(link)
        data = pb.SocketData(streams_started=succeeded + failed + len(link.calls),
                             streams_succeeded=succeeded, streams_failed=failed)
        for name, value in (("lanerpc_lane", lane), ("lanerpc_bytes_in", str(link.bytes_in)),
                            ("lanerpc_bytes_out", str(link.bytes_out))):
            data.option.add(name=name, value=value)
        security = pb.Security()
        security.other.name = "lanerpc_lane"
        packed = any_pb2.Any()
        packed.Pack(wrappers_pb2.StringValue(value=lane))
        security.other.value.CopyFrom(packed)
        socket = pb.Socket(ref=pb.SocketRef(socket_id=socket_id, name=_name(link)), data=data,
                           security=security, remote_name=_peer(link))
        _fill_address(socket.remote, _peer(link))
        return socket


def _peer(link: ServerLink) -> str:
    if link.dialled_as is not None:       # upgraded: the TCP address it came from
        return link.dialled_as
    return link.peer.address if link.peer is not None else "?"


def _name(link: ServerLink) -> str:
    return f"{link.lane or '?'} {_peer(link)}"


def _fill_address(address: Any, peer: str) -> None:
    """gRPC's peer spelling ("ipv4:1.2.3.4:5", "ipv6:[::1]:5", "unix:/p") as a channelz Address."""
    import ipaddress

    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        host = host.replace("%5B", "[").replace("%5D", "]").strip("[]")
        try:
            address.tcpip_address.ip_address = ipaddress.ip_address(host).packed
            address.tcpip_address.port = int(port)
        except ValueError:
            address.other_address.name = peer
    elif kind == "unix":
        address.uds_address.filename = rest
    else:
        address.other_address.name = peer


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
