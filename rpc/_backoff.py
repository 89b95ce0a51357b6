"""How long to wait before trying again: the schedule gRPC's backoffs share, and the
jitter in which they differ on purpose.

Every backoff grows the same way: ``initial`` seconds, ``multiplier`` times longer
after each failure, never more than ``maximum`` (:func:`grown`). What is drawn around
that delay differs:

- connection backoff (gRPC's doc/connection-backoff.md: 1 s, times 1.6, at most
  120 s, give or take 20 %): :class:`Backoff`, a subchannel's reconnects and its
  health Watch's (rpc._balancer). Clients that lost a server together spread out, and
  none waits much less than the schedule says. A failed DNS lookup waits the same
  schedule, without the jitter (rpc._resolver).
- retry backoff (gRFC A6): uniformly random between 0 and the grown delay ("full
  jitter"), so that calls failed together are made again spread over all of it
  (rpc._service_config's RetryPolicy).
"""

from __future__ import annotations

import dataclasses
import random


def grown(initial: float, multiplier: float, maximum: float, failures: int) -> float:
    """The delay after ``failures`` failures in a row have each grown ``initial``
    by ``multiplier`` (0: ``initial`` itself), at most ``maximum``."""
    try:
        return min(initial * multiplier ** failures, maximum)
    except OverflowError:     # a failure a minute for days: long past the maximum
        return maximum


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """gRPC's connection backoff parameters (doc/connection-backoff.md)."""

    initial: float = 1.0
    multiplier: float = 1.6
    jitter: float = 0.2
    maximum: float = 120.0
    min_connect_timeout: float = 20.0

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row, before jitter."""
        return grown(self.initial, self.multiplier, self.maximum, failures)

    def jittered(self, delay: float) -> float:
        """``delay`` give or take the jitter, so that clients spread out."""
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter)
