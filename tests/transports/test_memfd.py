"""The memfd variant's fds: a sealed segment a peer cannot resize, and the receiver's
checks of whatever fds arrive (each refused case closes every fd it got)."""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from collections.abc import Callable, Iterator

import pytest

from rpc.transports import _memfd
from rpc.transports._memfd import GRANTED, MemfdRejected, check_received, receive_fds, send_fds
from rpc.transports.shm import SegmentLayout, ShmOffer, ShmSegment, ShmUnavailable

if not _memfd.memfd_supported():
    pytest.skip("no sealed memfds here", allow_module_level=True)

CAPACITY = 4096
SIZE = SegmentLayout.for_capacity(CAPACITY).size
OFFER = ShmOffer(segment="", semaphores=(), ring_capacity=CAPACITY, nonce=b"", variant="memfd")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_fd_left_open() -> Iterator[None]:
    """Every case ends with exactly the fds it started with: nothing received leaks."""
    before = open_fds()
    yield
    assert open_fds() - before == set()


def eventfd(flags: int = os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC) -> int:
    return os.eventfd(0, flags)


def memfd(size: int = SIZE, seals: int = _memfd.SEALS) -> int:
    fd = os.memfd_create("test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def through_a_socket(message: bytes, fds: list[int]) -> tuple[bytes, list[int]]:
    """Send ``fds`` (then close our copies) and receive them, as the lane does."""
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        send_fds(sender.fileno(), message, fds)
        return receive_fds(receiver.fileno())
    finally:
        _memfd.close_all(fds)
        sender.close()
        receiver.close()


def test_the_segment_cannot_be_shrunk_grown_or_unsealed() -> None:
    segment, _ = ShmSegment.create(CAPACITY, "memfd")
    try:
        fd = segment.fds_to_send()[0]
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == _memfd.SEALS
        for size in (0, SIZE // 2, SIZE * 2):
            with pytest.raises(PermissionError):
                os.ftruncate(fd, size)
        with pytest.raises(PermissionError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        assert os.fstat(fd).st_size == SIZE
        assert not any(name.startswith("lanerpc") for name in os.listdir("/dev/shm"))
    finally:
        segment.close()


def test_a_sent_segment_is_accepted_and_shares_memory() -> None:
    segment, offer = ShmSegment.create(CAPACITY, "memfd")
    try:
        message, fds = through_a_socket(GRANTED, [os.dup(fd) for fd in segment.fds_to_send()])
        client = ShmSegment.from_fds(offer, message, fds)
        try:
            segment.s2c.write(b"hello")
            assert client.s2c.read() == b"hello"
        finally:
            client.close()
    finally:
        segment.close()


BadFds = Callable[[], list[int]]

REFUSED: dict[str, tuple[BadFds, str]] = {
    "two fds": (lambda: [memfd(), eventfd()], "2 file descriptors"),
    "four fds": (lambda: [memfd(), eventfd(), eventfd(), eventfd()], "4 file descriptors"),
    "unsealed memfd": (lambda: [memfd(seals=0), eventfd(), eventfd()], "seals"),
    "a write seal too": (
        lambda: [memfd(seals=_memfd.SEALS | fcntl.F_SEAL_WRITE), eventfd(), eventfd()], "seals"),
    "another size": (lambda: [memfd(size=SIZE * 2), eventfd(), eventfd()], "bytes, not"),
    "a file, not a memfd": (
        lambda: [os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR), eventfd(), eventfd()],
        "memfd|seals"),
    "a pipe for a doorbell": (lambda: [memfd(), *os.pipe()], "not an eventfd"),
    "a counting eventfd": (
        lambda: [memfd(), eventfd(os.EFD_NONBLOCK), eventfd()], "semaphore mode"),
    "a blocking eventfd": (lambda: [memfd(), eventfd(), eventfd(os.EFD_SEMAPHORE)], "blocking"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_wrong_fds_are_refused_and_closed(case: str) -> None:
    make, reason = REFUSED[case]
    message, fds = through_a_socket(GRANTED, make())
    with pytest.raises(MemfdRejected, match=reason):
        check_received(message, fds, SIZE)


def test_one_eventfd_as_both_doorbells_is_refused() -> None:
    bell = eventfd()
    message, fds = through_a_socket(GRANTED, [memfd(), bell, os.dup(bell)])
    with pytest.raises(MemfdRejected, match="one eventfd"):
        check_received(message, fds, SIZE)


def test_too_many_fds_are_cut_off_by_the_kernel_and_closed() -> None:
    """More fds than the control buffer holds: MSG_CTRUNC. The kernel closes the ones
    that did not fit, we close the ones that did."""
    with pytest.raises(MemfdRejected, match="more file descriptors"):
        through_a_socket(GRANTED, [eventfd() for _ in range(12)])


def test_a_message_that_is_not_a_grant_is_refused() -> None:
    message, fds = through_a_socket(b"LRPCFDSX", [memfd(), eventfd(), eventfd()])
    with pytest.raises(MemfdRejected, match="not a grant"):
        check_received(message, fds, SIZE)


def test_from_fds_turns_a_refusal_into_shm_unavailable() -> None:
    message, fds = through_a_socket(GRANTED, [memfd(seals=0), eventfd(), eventfd()])
    with pytest.raises(ShmUnavailable, match="refused"):
        ShmSegment.from_fds(OFFER, message, fds)


def test_a_segment_not_holding_rings_is_refused() -> None:
    """Right fds, but the memory does not start with the ring pair's header."""
    message, fds = through_a_socket(GRANTED, [memfd(), eventfd(), eventfd()])
    with pytest.raises(ShmUnavailable, match="ring pair"):
        ShmSegment.from_fds(OFFER, message, fds)
