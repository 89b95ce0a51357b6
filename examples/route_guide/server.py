"""The RouteGuide service (all four call kinds), served by lanerpc as grpc.aio would serve it.

    python -m examples.route_guide.server                      # 127.0.0.1:50052
    python -m examples.route_guide.server 127.0.0.1:0 unix:/path/route.sock

Each argument is an address to listen on (port 0 picks a free port); once listening, the
server prints one "listening on ADDRESS" line per address, with the real port.
``rpc.serve_async`` runs it: SIGTERM or Ctrl-C stops it gracefully.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

import grpc

import rpc
from examples.route_guide import route_guide_pb2, route_guide_pb2_grpc
from examples.route_guide.route_guide_data import distance_m, read_database


def _key(point: route_guide_pb2.Point) -> tuple[int, int]:
    return point.latitude, point.longitude


class RouteGuide(route_guide_pb2_grpc.RouteGuideServicer):
    def __init__(self, features: list[route_guide_pb2.Feature]) -> None:
        self.features = {_key(f.location): f for f in features}
        self.notes: dict[tuple[int, int], list[route_guide_pb2.RouteNote]] = {}

    async def GetFeature(self, request: route_guide_pb2.Point,
                         context: grpc.aio.ServicerContext) -> route_guide_pb2.Feature:
        found = self.features.get(_key(request))
        return found if found is not None else route_guide_pb2.Feature(location=request)

    async def ListFeatures(self, request: route_guide_pb2.Rectangle,
                           context: grpc.aio.ServicerContext
                           ) -> AsyncIterator[route_guide_pb2.Feature]:
        lo, hi = request.lo, request.hi
        left, right = sorted((lo.longitude, hi.longitude))
        bottom, top = sorted((lo.latitude, hi.latitude))
        for feature in self.features.values():
            where = feature.location
            if feature.name and left <= where.longitude <= right and bottom <= where.latitude <= top:
                yield feature

    async def RecordRoute(self, request_iterator: AsyncIterator[route_guide_pb2.Point],
                          context: grpc.aio.ServicerContext) -> route_guide_pb2.RouteSummary:
        points = features = 0
        distance = 0.0
        previous = None
        start = time.monotonic()
        async for point in request_iterator:
            points += 1
            if self.features.get(_key(point), route_guide_pb2.Feature()).name:
                features += 1
            if previous is not None:
                distance += distance_m(previous, point)
            previous = point
        return route_guide_pb2.RouteSummary(point_count=points, feature_count=features,
                                            distance=int(distance),
                                            elapsed_time=int(time.monotonic() - start))

    async def RouteChat(self, request_iterator: AsyncIterator[route_guide_pb2.RouteNote],
                        context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[route_guide_pb2.RouteNote]:
        async for note in request_iterator:
            earlier = self.notes.setdefault(_key(note.location), [])
            for prior in list(earlier):
                yield prior
            earlier.append(note)


async def serve(addresses: list[str]) -> None:
    server = rpc.server()
    route_guide_pb2_grpc.add_RouteGuideServicer_to_server(RouteGuide(read_database()), server)
    bound = []
    for address in addresses:
        port = server.add_insecure_port(address)
        if not address.startswith("unix:"):
            address = f"{address.rsplit(':', 1)[0]}:{port}"     # the real port when asked for 0
        bound.append(address)
    await server.start()
    for address in bound:       # only now: clients may connect as soon as they read this
        print(f"listening on {address}", flush=True)
    await rpc.serve_async(server, grace=1.0)     # until SIGTERM or Ctrl-C: a graceful stop


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:] or ["127.0.0.1:50052"]))
