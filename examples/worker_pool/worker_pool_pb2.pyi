from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Task(_message.Message):
    __slots__ = ("id", "data", "rounds")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    id: int
    data: bytes
    rounds: int
    def __init__(self, id: _Optional[int] = ..., data: _Optional[bytes] = ..., rounds: _Optional[int] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("id", "digest", "worker_pid")
    ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    WORKER_PID_FIELD_NUMBER: _ClassVar[int]
    id: int
    digest: bytes
    worker_pid: int
    def __init__(self, id: _Optional[int] = ..., digest: _Optional[bytes] = ..., worker_pid: _Optional[int] = ...) -> None: ...
