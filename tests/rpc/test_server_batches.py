"""A server link never starts a handler for a request the client cancelled in the same
bytes that opened it (a backlog of stale calls after an overload), and touches nothing
else in the batch."""

from __future__ import annotations

from rpc._connection import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    MessageReceived,
    RequestReceived,
    StreamEnded,
)
from rpc._server import _without_requests_cancelled_unseen as prune


def _request(sid: int) -> RequestReceived:
    return RequestReceived(sid, "/svc/M", 0.005, (), False)


def test_a_request_opened_and_cancelled_in_one_batch_is_never_seen() -> None:
    kept = [_request(3), MessageReceived(3, b"b", True)]
    events = [_request(1), MessageReceived(1, b"a", False), *kept,
              StreamEnded(1, CANCELLED, "deadline", by_peer=True)]
    assert prune(events) == kept


def test_everything_else_stays() -> None:
    # A cancel for a stream opened in an earlier batch, a stream the server itself ended
    # (a limit), and a request without a cancel: all reach the link.
    events = [StreamEnded(7, CANCELLED, "client cancelled", by_peer=True), _request(9),
              MessageReceived(9, b"x", True), _request(11),
              StreamEnded(11, DEADLINE_EXCEEDED, "too large", by_peer=False)]
    assert prune(events) == events
    assert prune(events) is events
