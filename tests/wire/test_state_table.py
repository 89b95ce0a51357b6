"""The stream transition table (rpc._connection._TRANSITIONS), checked as data.

Every (StreamState, StreamInput) pair either moves to the table's state or raises
ProtocolError, and the table agrees with a model written independently of it:
a stream is two half-streams, ours and the peer's, each open until its END_STREAM;
TRAILERS or CANCEL close both.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpc._connection import _TRANSITIONS, StreamInput, StreamState, transition
from rpc._wire import ProtocolError

S, In = StreamState, StreamInput
ALL_PAIRS = list(itertools.product(StreamState, StreamInput))

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


@pytest.mark.parametrize("state, event", ALL_PAIRS, ids=lambda v: v.name)
def test_every_pair_moves_to_the_table_state_or_raises(state, event):
    if (state, event) in _TRANSITIONS:
        assert transition(state, event) is _TRANSITIONS[(state, event)]
    else:
        with pytest.raises(ProtocolError) as info:
            transition(state, event)
        # The reason names what was refused and where.
        assert event.value in str(info.value) and state.value in str(info.value)


@pytest.mark.parametrize("state, event", ALL_PAIRS, ids=lambda v: v.name)
def test_table_agrees_with_the_two_half_streams_model(state, event):
    assert _TRANSITIONS.get((state, event)) is model(state, event)


@pytest.mark.parametrize("event", list(StreamInput), ids=lambda v: v.name)
def test_closed_accepts_nothing(event):
    with pytest.raises(ProtocolError):
        transition(S.CLOSED, event)


def test_no_entry_leaves_closed():
    assert [key for key in _TRANSITIONS if key[0] is S.CLOSED] == []


def test_table_is_made_of_states_and_inputs():
    for (state, event), target in _TRANSITIONS.items():
        assert isinstance(state, StreamState)
        assert isinstance(event, StreamInput)
        assert isinstance(target, StreamState)


def test_every_state_can_reach_closed():
    reachable = {S.OPEN}
    frontier = [S.OPEN]
    while frontier:
        state = frontier.pop()
        for (src, _), dst in _TRANSITIONS.items():
            if src is state and dst not in reachable:
                reachable.add(dst)
                frontier.append(dst)
    assert reachable == set(StreamState)
    for state in StreamState:
        if state is not S.CLOSED:
            assert (state, In.CLOSE) in _TRANSITIONS, f"{state} cannot be closed by TRAILERS/CANCEL"


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
