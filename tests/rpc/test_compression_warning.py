"""Compression asked of a lanerpc lane is not silently dropped: lanerpc's wire carries
messages uncompressed (compression is a later issue), so each place that takes a
compression logs one WARNING saying so, and the call still works."""

from __future__ import annotations

import logging

import grpc
import pytest

import rpc
from examples.echo import echo_pb2_grpc
from rpc import _options
from tests._support import Echo, msg, serve, within


@pytest.fixture(autouse=True)
def _fresh_warnings():
    saved = set(_options._warned)
    _options._warned.clear()
    yield
    _options._warned.clear()
    _options._warned.update(saved)


async def test_call_compression_is_warned_once_and_the_call_works(caplog):
    caplog.set_level(logging.WARNING, logger="lanerpc")
    async with serve(Echo(), lanes="tcp") as served:
        stub = echo_pb2_grpc.EchoStub(served.channel(lanes="tcp"))
        for _ in range(3):
            reply = await within(stub.Unary(msg(b"z" * 1000), compression=grpc.Compression.Gzip))
            assert reply.payload == b"z" * 1000
        await within(stub.Unary(msg(b"none"), compression=grpc.Compression.NoCompression))
    lines = [r.getMessage() for r in caplog.records if "compression" in r.getMessage()]
    assert len(lines) == 1 and "Gzip" in lines[0] and "uncompressed" in lines[0], lines


def test_channel_and_server_compression_are_warned(caplog):
    caplog.set_level(logging.WARNING, logger="lanerpc")
    rpc.server(compression=grpc.Compression.Deflate)
    rpc.insecure_channel("127.0.0.1:1", compression=grpc.Compression.Gzip)
    lines = [r.getMessage() for r in caplog.records if "compression" in r.getMessage()]
    assert any("server(compression)=Deflate" in line for line in lines), lines
    assert any("insecure_channel(compression)=Gzip" in line for line in lines), lines
