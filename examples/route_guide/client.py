"""Calls the RouteGuide with lanerpc exactly as a grpc.aio client would: one call of each
kind, then the lane the channel ended up on.

    python -m examples.route_guide.client                      # 127.0.0.1:50052
    python -m examples.route_guide.client unix:/path/route.sock
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncIterator

import rpc
from examples.route_guide import route_guide_pb2, route_guide_pb2_grpc
from examples.route_guide.route_guide_data import degrees, read_database

Point = route_guide_pb2.Point


async def get_feature(stub: route_guide_pb2_grpc.RouteGuideStub) -> None:
    for point in (Point(latitude=412345670, longitude=-738765430), Point(latitude=0, longitude=0)):
        feature = await stub.GetFeature(point, timeout=5)
        print(f"GetFeature {degrees(point)}: {feature.name or 'no feature'}")


async def list_features(stub: route_guide_pb2_grpc.RouteGuideStub) -> None:
    area = route_guide_pb2.Rectangle(lo=Point(latitude=410000000, longitude=-740000000),
                                     hi=Point(latitude=413000000, longitude=-738000000))
    found = 0
    async for feature in stub.ListFeatures(area, timeout=5):
        print(f"ListFeatures: {feature.name} at {degrees(feature.location)}")
        found += 1
    print(f"ListFeatures: {found} features in the rectangle")


async def record_route(stub: route_guide_pb2_grpc.RouteGuideStub) -> None:
    places = read_database()
    rng = random.Random(7)          # the same route every run

    async def route() -> AsyncIterator[route_guide_pb2.Point]:
        for _ in range(8):
            yield rng.choice(places).location

    summary = await stub.RecordRoute(route(), timeout=5)
    print(f"RecordRoute: {summary.point_count} points, {summary.feature_count} features, "
          f"{summary.distance} m")


async def route_chat(stub: route_guide_pb2_grpc.RouteGuideStub) -> None:
    here, there = Point(latitude=1, longitude=1), Point(latitude=2, longitude=2)
    notes = [route_guide_pb2.RouteNote(location=where, message=text) for where, text in
             ((here, "first at here"), (there, "first at there"),
              (here, "second at here"), (there, "second at there"))]
    call = stub.RouteChat(timeout=5)
    for note in notes:
        await call.write(note)
    await call.done_writing()
    async for earlier in call:
        print(f"RouteChat: got {earlier.message!r} at {degrees(earlier.location)}")


async def main(target: str) -> None:
    async with rpc.insecure_channel(target) as channel:
        stub = route_guide_pb2_grpc.RouteGuideStub(channel)
        await get_feature(stub)          # unary
        await list_features(stub)        # server streaming
        await record_route(stub)         # client streaming
        await route_chat(stub)           # bidirectional streaming
        # Not part of grpc.aio: which lane carries this channel ("tcp", "unix", "shm").
        print(f"lane: {channel.lane}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50052"))
