"""The connection's events (rpc._events) as their owners use them, in either build:
fields by name and defaults, equality by type and fields, a readable repr."""

from __future__ import annotations

import pytest

from rpc._events import (
    EndOfInput,
    GoAwayReceived,
    MessageReceived,
    RequestReceived,
    StreamEnded,
    StreamWritable,
)


def test_fields_are_read_by_name_and_defaults_apply() -> None:
    ended = StreamEnded(3, 14, "gone")
    assert (ended.stream_id, ended.code, ended.details) == (3, 14, "gone")
    assert (ended.metadata, ended.not_started, ended.by_peer) == ((), False, True)
    assert MessageReceived(1, b"x", True).encoding == 0
    request = RequestReceived(5, "/svc/M", None, (("k", "v"),), False)
    assert (request.method, request.timeout, request.metadata) == ("/svc/M", None, (("k", "v"),))


def test_events_are_equal_when_type_and_fields_are() -> None:
    assert MessageReceived(1, b"x", True) == MessageReceived(1, b"x", True)
    assert MessageReceived(1, b"x", True) != MessageReceived(1, b"x", False)
    assert MessageReceived(1, b"x", True) != MessageReceived(1, b"x", True, 2)
    assert StreamEnded(1, 0, "", by_peer=False) != StreamEnded(1, 0, "")
    assert EndOfInput(1) != StreamWritable(1)     # same fields, other kind of event
    assert EndOfInput(1) in [StreamWritable(1), EndOfInput(1)]
    assert EndOfInput(1) != 1


def test_repr_names_the_event_and_its_fields() -> None:
    assert repr(GoAwayReceived(7, 0, "bye")) == "GoAwayReceived(last_stream_id=7, code=0, reason='bye')"


def test_events_are_not_hashable() -> None:
    # As the dataclasses they replaced: mutable, compared by value.
    with pytest.raises(TypeError):
        hash(EndOfInput(1))
