"""rpc's public surface is exactly its __all__, and each name is what it says."""

from __future__ import annotations

import grpc.aio

import rpc


def test_all_is_a_sorted_tuple_of_real_names():
    assert isinstance(rpc.__all__, tuple)
    assert list(rpc.__all__) == sorted(rpc.__all__)
    for name in rpc.__all__:
        assert hasattr(rpc, name), name


def test_no_public_name_outside_all():
    public = {name for name in dir(rpc) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(rpc, name)).__name__ == "module"}
    assert public - modules - set(rpc.__all__) == set()


def test_classes_subclass_grpc_aio_bases():
    assert issubclass(rpc.Channel, grpc.aio.Channel)
    assert issubclass(rpc.Server, grpc.aio.Server)
    assert issubclass(rpc.ServicerContext, grpc.aio.ServicerContext)
    assert issubclass(rpc.UnaryUnaryCall, grpc.aio.UnaryUnaryCall)
    assert issubclass(rpc.UnaryStreamCall, grpc.aio.UnaryStreamCall)
    assert issubclass(rpc.StreamUnaryCall, grpc.aio.StreamUnaryCall)
    assert issubclass(rpc.StreamStreamCall, grpc.aio.StreamStreamCall)
    assert rpc.AioRpcError is grpc.aio.AioRpcError
    assert rpc.EOF is grpc.aio.EOF


def test_sync_all_is_a_sorted_tuple_of_real_names():
    import rpc.sync

    assert isinstance(rpc.sync.__all__, tuple)
    assert list(rpc.sync.__all__) == sorted(rpc.sync.__all__)
    public = {name for name in dir(rpc.sync) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(rpc.sync, name)).__name__ == "module"}
    assert public - modules == set(rpc.sync.__all__)


def test_sync_classes_subclass_grpc_bases():
    import rpc.sync

    assert issubclass(rpc.sync.Channel, grpc.Channel)
    assert issubclass(rpc.sync.Server, grpc.Server)
    assert issubclass(rpc.sync.SyncServicerContext, grpc.ServicerContext)
    for base in (grpc.RpcError, grpc.Call, grpc.Future):
        assert issubclass(rpc.sync.SyncCall, base)
