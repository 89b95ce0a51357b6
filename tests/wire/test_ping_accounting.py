"""The core counts the PING frames it queues (ours and the ACKs it answers with), so
the layer above can tell "sent only PINGs" from "sent data" (gRPC's ping limits)."""

from __future__ import annotations

import pytest

from rpc import _wire
from tests.wire.helpers import CLIENT, SERVER, ConnectionPair

PING_FRAME = len(_wire.frame(_wire.PING, 0, 0, bytes(8)))


@pytest.mark.parametrize("pinger", [CLIENT, SERVER])
def test_pings_and_their_acks_are_counted_and_nothing_else(pinger):
    pair = ConnectionPair()
    pair.handshake()
    other = ConnectionPair.other(pinger)
    assert pair.conn[pinger].ping_bytes_sent == pair.conn[other].ping_bytes_sent == 0
    for _ in range(3):
        pair.conn[pinger].ping()
    pair.pump()
    assert pair.conn[pinger].ping_bytes_sent == 3 * PING_FRAME    # its PINGs
    assert pair.conn[other].ping_bytes_sent == 3 * PING_FRAME     # the ACKs
