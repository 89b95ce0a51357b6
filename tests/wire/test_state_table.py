"""Stream states: what may be sent and received on a stream at each point of its life.

The rules are checked against a model written independently of rpc._connection: a
stream is two half-streams, ours and the peer's, each open until its END_STREAM;
TRAILERS or CANCEL close both. ``transition()`` must follow the model for every
(state, input), and a real :class:`Connection`, driven through its public methods
and fed real frames, must accept what the model allows and refuse what it forbids.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpc import _wire
from rpc._connection import EndOfInput, MessageReceived, StreamEnded, StreamInput, StreamState, transition
from rpc._wire import GoAwayCode, ProtocolError
from tests.wire.helpers import CLIENT, SERVER, ConnectionPair, drain_frames, events_of

S, In = StreamState, StreamInput
OK = 0

# (we may send, the peer may send) for each state.
_HALVES = {
    S.OPEN: (True, True),
    S.HALF_CLOSED_LOCAL: (False, True),
    S.HALF_CLOSED_REMOTE: (True, False),
    S.CLOSED: (False, False),
}
_STATE_OF = {halves: state for state, halves in _HALVES.items()}


def model(state: StreamState, event: StreamInput) -> StreamState | None:
    """What the two-half-streams model allows; None where it forbids."""
    local, remote = _HALVES[state]
    if event is In.SEND_MESSAGE:
        return state if local else None
    if event is In.RECV_MESSAGE:
        return state if remote else None
    if event is In.SEND_END:
        return _STATE_OF[(False, remote)] if local else None
    if event is In.RECV_END:
        return _STATE_OF[(local, False)] if remote else None
    assert event is In.CLOSE
    return S.CLOSED if (local or remote) else None


@pytest.mark.parametrize("state, event", list(itertools.product(StreamState, StreamInput)),
                         ids=lambda v: v.name)
def test_transition_follows_the_model(state, event):
    expected = model(state, event)
    if expected is not None:
        assert transition(state, event) is expected
    else:
        with pytest.raises(ProtocolError) as info:
            transition(state, event)
        # The reason names what was refused and where.
        assert event.value in str(info.value) and state.value in str(info.value)


@given(st.lists(st.sampled_from(list(StreamInput)), max_size=30))
def test_sequences_of_inputs_follow_the_model(events):
    state = S.OPEN
    expected = S.OPEN
    for event in events:
        want = model(expected, event)
        if want is None:
            with pytest.raises(ProtocolError):
                transition(state, event)
            continue   # a refused input leaves the state as it was
        state = transition(state, event)
        expected = want
        assert state is expected


# -- the same rules, as a connection applies them ----------------------------------------
# A stream is looked at from one side (``side``): the client's end or the server's. The
# client never receives END_STREAM (a server ends a stream with TRAILERS) and the server
# never sends it, so those inputs are left out; a CLOSED stream is forgotten (frames
# for it may cross in flight and are dropped), so it has no rules of its own here.


def _open(pair: ConnectionPair, half_close: bool) -> int:
    sid = pair.client.start_request("/svc/M", None, None)
    if half_close:
        pair.client.end_input(sid)
    pair.pump()
    return sid


def _apply(pair: ConnectionPair, side, sid: int, event: StreamInput) -> list:
    """Make ``event`` happen to stream ``sid`` at ``side``; returns that side's events."""
    me = pair.conn[side]
    if event is In.SEND_MESSAGE:
        me.send_message(sid, b"out")
        return []
    if event is In.SEND_END:        # the client's half-close
        me.end_input(sid)
        return []
    if event is In.CLOSE:           # the peer's TRAILERS (to a client) or CANCEL (to a server)
        peer = pair.conn[pair.other(side)]
        if side is CLIENT:
            peer.end_stream(sid, OK)
        else:
            peer.cancel(sid)
        return pair.feed(side, pair.take(pair.other(side)))
    # Received frames are made by hand: an honest peer refuses to send them.
    flags = _wire.FLAG_END_STREAM | _wire.FLAG_NO_MESSAGE if event is In.RECV_END else 0
    body = b"" if event is In.RECV_END else b"in"
    return pair.feed(side, _wire.frame(_wire.MESSAGE, flags, sid, body))


CASES = [
    (side, state, event)
    for side, states, events in [
        (CLIENT, (S.OPEN, S.HALF_CLOSED_LOCAL), (In.SEND_MESSAGE, In.SEND_END, In.RECV_MESSAGE, In.CLOSE)),
        (SERVER, (S.OPEN, S.HALF_CLOSED_REMOTE), (In.SEND_MESSAGE, In.RECV_MESSAGE, In.RECV_END, In.CLOSE)),
    ]
    for state in states
    for event in events
]


@pytest.mark.parametrize("side, state, event", CASES,
                         ids=lambda v: v.name if hasattr(v, "name") else v.value)
def test_connection_allows_what_the_model_allows(side, state, event):
    pair = ConnectionPair()
    pair.handshake()
    sid = _open(pair, half_close=state is not S.OPEN)
    me = pair.conn[side]
    allowed = model(state, event) is not None
    if not allowed:
        with pytest.raises(ProtocolError, match=f"not allowed on a {state.value} stream"):
            _apply(pair, side, sid, event)
        if event in (In.RECV_MESSAGE, In.RECV_END):   # the peer broke the rules: it is told
            frames = drain_frames(me)
            assert frames[-1].type == _wire.GOAWAY
            assert _wire.decode_goaway(frames[-1].payload)[1] == GoAwayCode.PROTOCOL_ERROR
            assert me.closed
        return
    events = _apply(pair, side, sid, event)
    if event is In.RECV_MESSAGE:
        assert [e.data for e in events_of(events, MessageReceived)] == [b"in"]
    elif event is In.RECV_END:
        assert events_of(events, EndOfInput) == [EndOfInput(sid)]
    elif event is In.CLOSE:
        assert [e.stream_id for e in events_of(events, StreamEnded)] == [sid]
        assert sid not in me.streams
    # Whatever was allowed left the connection in good order: the call can still end.
    assert not me.closed
    if event is not In.CLOSE:
        pair.server.end_stream(sid, OK)
        client_events, _ = pair.pump()
        assert [e.code for e in events_of(client_events, StreamEnded)] == [OK]
