"""The route guide's features (route_guide_db.json, made up for this example) and the
geometry its servicer needs."""

from __future__ import annotations

import json
import math
import os

from examples.route_guide import route_guide_pb2

_DB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "route_guide_db.json")
_COORD_FACTOR = 1e7          # points are degrees times 10**7
_EARTH_RADIUS_M = 6_371_000


def read_database(path: str = _DB) -> list[route_guide_pb2.Feature]:
    with open(path) as f:
        return [route_guide_pb2.Feature(
                    name=item["name"],
                    location=route_guide_pb2.Point(latitude=item["location"]["latitude"],
                                                   longitude=item["location"]["longitude"]))
                for item in json.load(f)]


def distance_m(start: route_guide_pb2.Point, end: route_guide_pb2.Point) -> float:
    """Great-circle distance between two points, in metres (the haversine formula)."""
    lat1 = math.radians(start.latitude / _COORD_FACTOR)
    lat2 = math.radians(end.latitude / _COORD_FACTOR)
    dlat = lat2 - lat1
    dlon = math.radians((end.longitude - start.longitude) / _COORD_FACTOR)
    a = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(math.sqrt(a))


def degrees(point: route_guide_pb2.Point) -> str:
    return f"({point.latitude / _COORD_FACTOR:.4f}, {point.longitude / _COORD_FACTOR:.4f})"
