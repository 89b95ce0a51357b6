"""One connection over any lane: an asyncio Protocol that feeds the sans-IO
:class:`~rpc._connection.Connection` and writes what it asks to send.

Writes are batched: everything queued during one turn of the event loop goes
out in one ``writelines`` (one system call), which is what makes pipelined
streams fast; bytes produced while handling received data go out at the end
of that read.

Reads are buffered (``asyncio.BufferedProtocol``): the socket lanes read straight
into the memory the connection lends (its receive buffer, or the place of a big
message's chunk in that message's one buffer), so no bytes object is made per
read and a big message is copied once on its way in. The shm lane copies its
ring's records into that memory too (through ``LaneAdapter``); bytes handed over
(a sniffed port's first bytes) go through ``data_received``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, cast

from rpc import _connection as c
from rpc._events import MessageReceived, PingAcked, StreamWritable
from rpc._options import Options
from rpc import _wire
from rpc._compression import Compressed
from rpc._proto import handshake_pb2
from rpc._settings import MemoryBudget
from rpc._wire import GoAwayCode, ProtocolError
from rpc.transports import PeerInfo, is_this_process, peer_info
from rpc.transports._spin import AdaptiveSpin, involuntary_switches

log = logging.getLogger("lanerpc")

COMPILED: bool = not __file__.endswith(".py")

_perf_counter_ns = time.perf_counter_ns
# (module globals: tests replace them)
_involuntary_switches = involuntary_switches
_peer_is_this_process = is_this_process

# Above this many bytes a flush is fed to the transport a piece at a time,
# stopping while it is paused: handing it megabytes at once makes it copy
# them into its own buffer and shift that buffer after every send.
_BIG_WRITE = 256 * 1024

# The keepalive timer looks at the input this many times per keepalive_time, so
# reading data costs nothing more than counting it (no clock read per receive):
# a PING goes out at most keepalive_time / _KA_STEPS later than exactly due.
_KA_STEPS = 8


class _LinkBase:
    """What a :class:`Link` is, less its being an asyncio protocol: its state and
    everything it does. Compiled, this is an extension type (``_link.pxd``) whose
    fields are C fields, which can't have asyncio.BufferedProtocol (a Python class)
    as its base; :class:`Link` adds that."""

    def __init__(self, role: c.Role, options: Options, hello: handshake_pb2.Hello | None,
                 budget: MemoryBudget | None, awake_us: float) -> None:
        self.options = options
        limits = c.Limits(
            max_metadata_size=options.max_metadata_size,
            max_receive_message_length=options.max_receive_message_length,
            max_concurrent_streams=options.max_concurrent_streams,
            # The connection window bounds what a connection buffers (pieces of a
            # message are credited as it is consumed), so the largest message fits.
            connection_window=min(_wire.MAX_WINDOW, max(
                _wire.DEFAULT_CONNECTION_WINDOW,
                options.max_receive_message_length + _wire.DEFAULT_MAX_FRAME_SIZE)),
        )
        if role is c.Role.CLIENT:
            hello = _with_user_agent(hello, options.user_agent)
        self.conn = c.Connection(role, limits, hello=hello, budget=budget)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: PeerInfo | None = None
        self.lane: str | None = None
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.close_reason: str | None = None
        self.refused = False          # the handshake ended in a refusal (either side's)
        self._lane_answer: asyncio.Future[str] | None = None
        self._flush_scheduled = False
        self._writer_yielding = False  # a writer let the loop turn mid-burst (see writer_yields)
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._drained: asyncio.Future[None] = self.loop.create_future()   # what drain() returns
        self._drained.set_result(None)                                   # with nothing to wait for
        self._backlog: list[bytes | memoryview] = []   # frames waiting while the transport is paused
        # Keep-awake after a write on the socket lanes (see stay_awake).
        self._awake = AdaptiveSpin(awake_us, max_probe_gap=256) if awake_us else None
        self._awake_until = 0         # perf_counter_ns deadline while awake, else 0
        self._awake_caught = False    # the last wait ended in a read, not judged yet
        self._awake_switches = 0      # this thread's preemptions when that wait began
        self._awake_queued = False    # an _awake_step is queued
        self.bytes_in = 0
        self.bytes_out = 0
        self.tls_transport = False    # the transport is the event loop's TLS (see flush)
        self.calls: dict[int, Any] = {}   # stream id -> the subclass's call object
        # Keepalive (see _keepalive_tick): PING after keepalive_time without input.
        self._ka_time = (options.keepalive_time if role is c.Role.CLIENT
                         else options.server_keepalive_time)
        self._ka_timer: asyncio.TimerHandle | None = None
        self._ka_payload = b""
        self._ka_in_at_ping = -1      # bytes_in when our PING went out; -1: none unanswered
        self._last_input = 0.0        # loop time bytes were last seen coming in (see the tick)
        self._ka_seen = -1            # bytes_in at the last tick
        self._pings_without_data = 0  # our PINGs since this side last sent anything else
        self._data_mark = 0           # bytes sent less PING frames, at the last look

    # ------------------------------------------------------------ transport side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Every lane (tcp, unix, shm) hands a stream transport: it has write().
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_info(transport)
        self.lane = self.peer.lane
        if _peer_is_this_process(self.peer):
            # Client and server in one process: the answer needs this process's CPU
            # (on this loop, or another thread's, which a waiting loop keeps waiting for
            # the GIL), so staying awake can only hold it up.
            self._awake = None
        self.tls_transport = transport.get_extra_info("ssl_object") is not None
        self._handshake_timer = self.loop.call_later(
            self.options.handshake_timeout, self._handshake_expired)
        self.flush()

    def _handshake_expired(self) -> None:
        if not self.conn.handshake_done:
            self.fail(ProtocolError("no complete HELLO within the handshake timeout",
                                    GoAwayCode.HANDSHAKE_TIMEOUT))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.receive_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_in += nbytes
        if self._awake_until:
            self._awake_until = 0     # the wait is over (stay_awake judges it)
            self._awake_caught = True
        try:
            events = self.conn.received_into(nbytes)
        except ProtocolError as exc:
            self.fail(exc)
            return
        self._received(events)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self._awake_until:
            self._awake_until = 0     # the wait is over (stay_awake judges it)
            self._awake_caught = True
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self.fail(exc)
            return
        self._received(events)

    def _received(self, events: list[c.Event]) -> None:
        if events:
            try:
                self._dispatch(events)
            except ProtocolError as exc:
                self.fail(exc)
                return
        if self.conn.has_data_to_send:
            self.flush()

    def eof_received(self) -> bool:
        return False   # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        self.conn.connection_lost()
        if self.close_reason is None:
            self.close_reason = f"connection lost: {exc}" if exc else "connection closed by peer"
        if not self.ready.done():
            error = PermissionError if self.refused else ConnectionError
            self.ready.set_exception(error(self.close_reason))
            self.ready.exception()   # mark retrieved; the owner reports it its own way
        if not self.closed.done():
            self.closed.set_result(None)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        if self._lane_answer is not None and not self._lane_answer.done():
            self._lane_answer.set_exception(ConnectionError(self.close_reason))
            self._lane_answer.exception()
        self._lane_answer = None
        self._lost(self.close_reason)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._backlog:
            backlog, self._backlog = self._backlog, []
            self._write_pieces(backlog)
            if self._write_paused:
                return
        if self.conn.has_data_to_send:
            # What waited in the connection meanwhile goes out on the loop's next turn,
            # not from in here: a transport may call this from inside a write of ours
            # (its buffer drained there), and frames written now would overtake the
            # rest of that write.
            self.flush_soon()
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def drain(self) -> Awaitable[None]:
        """What to await while the transport's own buffer is above its high-water
        mark: a future set when it is below again, or one already done (no coroutine
        made per message for the usual case, nothing to wait for). Frames the
        connection has queued past _BIG_WRITE bytes are written first: a writer that
        never yields to the loop would otherwise pile them up (up to the peer's
        windows, which a peer may announce at 2 GiB) before any flush ran."""
        if self.conn.bytes_to_send >= _BIG_WRITE:
            self.flush()
        if (self._write_paused or self._backlog) and not self.conn.closed:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            return waiter
        return self._drained

    # ------------------------------------------------------------ writing

    def open_stream(self, call: Any, method: str, timeout: float | None,
                    metadata: _wire.Metadata, message: bytes | None, end: bool,
                    encoding: int) -> None:
        """Client: open ``call``'s stream (``message``: the whole request of a unary
        call, compressed as ``encoding`` says, 0: not) and write it as
        :meth:`stream_queued` says. Sets the call's ``_link`` and ``_sid`` and keeps it
        in ``calls`` before anything is written, so what the write brings (a lost
        connection) finds it. Raises ConnectionClosed or MetadataTooLarge (nothing
        sent, nothing kept)."""
        sid = self.conn.start_request(method, timeout, metadata, end_stream=end,
                                      message=message, encoding=encoding)
        call._link = self
        call._sid = sid
        self.calls[sid] = call
        self.stream_queued(message is not None)

    def end_stream(self, sid: int, code: int, details: str, trailing: _wire.Metadata,
                   message: bytes | None, encoding: int) -> None:
        """Server: the final status of stream ``sid``, after ``message`` (a unary
        response), written as :meth:`stream_queued` says (the call leaves this side
        waiting for the next request)."""
        self.conn.end_stream(sid, code, details, trailing, message, encoding)
        self.stream_queued(True)

    def stream_queued(self, awaiting_answer: bool) -> None:
        """A stream queued its opening or its end: write at once if it is the only
        stream on this link (and then stay awake if this side now only waits for an
        answer), else with the other streams' writes at the end of this loop turn."""
        if len(self.calls) <= 1:
            self.flush()
            if awaiting_answer:
                self.stay_awake()
        else:
            self._awake_caught = False   # a wait's catch is judged at the next lone write only
            self.flush_soon()

    def flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        if self._writer_yielding and self.conn.bytes_to_send < _BIG_WRITE:
            # The writer goes on writing right after this turn: what it queued goes
            # out with what it writes next (drain() writes once _BIG_WRITE are queued),
            # not in a small write per turn, which would wake the peer per turn.
            self._writer_yielding = False
            self.loop.call_soon(self._scheduled_flush)
            return
        self._flush_scheduled = False
        self.flush()

    def writer_yields(self) -> None:
        """A stream's writer lets the loop turn in the middle of a burst of writes
        and goes on at once: the scheduled flush waits for its next writes."""
        self._writer_yielding = True

    # ------------------------------------------------------------ staying awake

    def stay_awake(self) -> None:
        """Called after the write that leaves this side waiting for one answer
        (a lone unary request; a server's last response with nothing else to do)."""
        awake = self._awake
        if awake is None or self.lane not in ("tcp", "unix", "pipe"):
            return
        switches = -1
        if self._awake_caught:
            # The last wait ended in a read; it is judged here, after this write went
            # out, not on the answer's path. It paid unless this thread was preempted
            # since it began: most likely by the peer it waited for, on a CPU the two
            # share, which the spin only held up; or, since then, while answering or
            # between calls, on a CPU other work wants too, where keeping awake does
            # not pay either (measured beside a busy process: no poll at all did best).
            self._awake_caught = False
            switches = _involuntary_switches()
            awake.record(switches == self._awake_switches)
        if not awake.should_spin():
            self._awake_until = 0     # a step still queued stops there
            return
        # perf_counter, not loop.time(): uvloop's clock ticks in milliseconds, which
        # would stretch a 50 us budget to up to 1 ms.
        self._awake_until = _perf_counter_ns() + awake.max_spin_ns
        self._awake_switches = switches if switches >= 0 else _involuntary_switches()
        if not self._awake_queued:
            self._awake_queued = True
            self.loop.call_soon(self._awake_step)

    def _awake_step(self) -> None:
        self._awake_queued = False
        until = self._awake_until
        if not until:
            return                    # a read ended the wait, or it was backed off
        if self.conn.closed or _perf_counter_ns() >= until:
            self._awake_until = 0
            awake = self._awake
            assert awake is not None   # scheduled only by stay_awake, which has one
            awake.record(False)
        else:
            self._awake_queued = True
            self.loop.call_soon(self._awake_step)

    def flush(self) -> None:
        transport = self.transport
        if ((self._write_paused or self._backlog) and transport is not None
                and not transport.is_closing()):
            # The transport takes nothing more for now: frames wait in the connection
            # (resume_writing flushes them), where those of a call that ends meanwhile
            # are dropped instead of sent, and a new call queues behind live ones only.
            return
        conn = self.conn
        data = conn.data_to_send()
        later = conn.take_events()
        if later:
            self._dispatch(later)
        if not data or transport is None or transport.is_closing():
            return
        if len(data) == 1:
            size = len(data[0])
            if size <= _BIG_WRITE:
                self.bytes_out += size
                transport.write(data[0])
                return
        elif (size := sum(map(len, data))) <= _BIG_WRITE:
            self.bytes_out += size
            if self.tls_transport:
                # The loop's TLS makes one record of each buffer given to writelines:
                # one record (one encryption, one decryption) per flush is cheaper.
                transport.write(b"".join(data))
            else:
                transport.writelines(data)
            return
        self._write_pieces(data)

    def _write_pieces(self, data: Sequence[bytes | memoryview]) -> None:
        """Hand ``data`` to the transport about _BIG_WRITE bytes at a time (small
        buffers grouped, big ones sliced), stopping while it is paused."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        step = _BIG_WRITE
        batch: list[bytes | memoryview] = []
        batched = 0
        for i, buf in enumerate(data):
            size = len(buf)
            if size <= step:
                batch.append(buf)
                batched += size
                if batched < step:
                    continue
                pieces, rest = batch, None
            else:
                pieces, rest = batch, memoryview(buf)
            batch, batched = [], 0
            if pieces:
                if self._write_paused:
                    self._backlog = [*pieces, *([rest] if rest is not None else []), *data[i + 1:]]
                    return
                joined = b"".join(pieces)     # one copy beats thousands of iovecs
                self.bytes_out += len(joined)
                transport.write(joined)
            if rest is not None:
                for start in range(0, len(rest), step):
                    if self._write_paused:
                        self._backlog = [rest[start:], *data[i + 1:]]
                        return
                    piece = rest[start:start + step]
                    self.bytes_out += len(piece)
                    transport.write(piece)
        if batch:
            if self._write_paused:
                self._backlog = batch
                return
            self.bytes_out += batched
            transport.write(b"".join(batch))

    # ------------------------------------------------------------ lifecycle

    async def handshake(self, timeout: float) -> None:
        """Wait until the handshake is done (raising what ended it, if it failed);
        a handshake that fails or takes longer than ``timeout`` aborts the connection."""
        try:
            await asyncio.wait_for(asyncio.shield(self.ready), timeout)
        except BaseException:
            self.abort("handshake failed")
            raise

    def handshake_complete(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if not self.ready.done():
            self.ready.set_result(None)
        if self._ka_time is not None:
            self._ka_seen = self.bytes_in
            self._last_input = self.loop.time()
            self._ka_timer = self.loop.call_later(self._ka_time / _KA_STEPS, self._keepalive_tick)

    # ------------------------------------------------------------ keepalive

    def _keepalive_tick(self) -> None:
        """gRPC's keepalive, on both sides: a PING goes out keepalive_time after the
        last bytes received (not on a fixed beat, so a silent peer is found within
        keepalive_time (+ 1/_KA_STEPS of it) + keepalive_timeout of its last word),
        and the connection is closed when nothing at all arrives within
        keepalive_timeout of it (any input proves the peer alive). As gRPC, no PING
        without calls unless keepalive_permit_without_calls, and a client sends at
        most max_pings_without_data PINGs before it sends something else."""
        self._ka_timer = None
        interval = self._ka_time
        if interval is None or self.conn.closed:
            return
        now = self.loop.time()
        if self._ka_in_at_ping >= 0:                 # our PING is out: this is its watchdog
            if self.bytes_in == self._ka_in_at_ping:
                self._keepalive_expired()
                return
            self._ka_in_at_ping = -1
        if self.bytes_in != self._ka_seen:           # input since the last look
            self._ka_seen = self.bytes_in
            self._last_input = now
        wait = self._last_input + interval - now
        if wait > 0:
            self._ka_timer = self.loop.call_later(min(wait, interval / _KA_STEPS),
                                                  self._keepalive_tick)
            return
        if not (self.calls or self.options.keepalive_permit_without_calls) \
                or not self._may_ping():
            self._ka_timer = self.loop.call_later(interval, self._keepalive_tick)
            return
        self._ka_payload = self.conn.ping()
        self._pings_without_data += 1
        self._ka_in_at_ping = self.bytes_in
        self.flush()
        self._ka_timer = self.loop.call_later(self.options.keepalive_timeout, self._keepalive_tick)

    def _may_ping(self) -> bool:
        """gRPC's grpc.http2.max_pings_without_data: a client sends that many PINGs
        in a row at most (0: no limit) until it sends data or headers again; a
        server is not limited."""
        if self._sent_other_frames():
            self._pings_without_data = 0
        limit = self.options.max_pings_without_data
        return self.conn.role is c.Role.SERVER or not limit or self._pings_without_data < limit

    def _sent_other_frames(self) -> bool:
        """Whether this side wrote anything but PING frames since the last look
        (headers, messages, trailers, window updates...). Frames still queued count
        as written: an ACK is queued before it is flushed, and PINGs arriving
        together must not look like data in between."""
        queued = self.conn.bytes_to_send + sum(map(len, self._backlog))
        mark = self.bytes_out + queued - self.conn.ping_bytes_sent
        sent, self._data_mark = mark != self._data_mark, mark
        return sent

    def keepalive_acked(self, payload: bytes) -> None:
        """The answer to our PING: the next one is due keepalive_time from now."""
        if payload == self._ka_payload and self._ka_in_at_ping >= 0 and self._ka_time is not None:
            self._ka_in_at_ping = -1
            self._ka_seen = self.bytes_in
            self._last_input = self.loop.time()
            if self._ka_timer is not None:
                self._ka_timer.cancel()
            self._ka_timer = self.loop.call_later(self._ka_time / _KA_STEPS,
                                                  self._keepalive_tick)

    def _keepalive_expired(self) -> None:
        reason = (f"keepalive: no answer to a PING within {self.options.keepalive_timeout:g} s; "
                  "peer frozen or network gone")
        log.warning("lanerpc: closing connection to %s: %s",
                    self.peer.address if self.peer else "?", reason)
        self.abort(reason)

    def _stop_timers(self) -> None:
        for timer in (self._handshake_timer, self._ka_timer):
            if timer is not None:
                timer.cancel()
        self._handshake_timer = self._ka_timer = None

    def fail(self, exc: ProtocolError) -> None:
        """Close this one connection because the peer broke the protocol."""
        if self.close_reason is None:
            self.close_reason = f"protocol error: {exc}"
        peer = self.peer.address if self.peer else "?"
        log.warning("lanerpc: closing connection from %s: %s", peer, exc)
        self.conn.fail(exc)
        self._write_all()
        if self.transport is not None:
            self.transport.close()

    def close(self, reason: str = "closed") -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if self.transport is not None and not self.transport.is_closing():
            self._write_all()
            self.transport.close()

    def _write_all(self) -> None:
        """Before closing: everything queued goes to the transport, paused or not (it
        writes its buffer out before it closes), the connection's last frames (a
        GOAWAY) included."""
        transport = self.transport
        data = self.conn.data_to_send()
        if transport is None or transport.is_closing():
            return
        pieces = [*self._backlog, *data]
        self._backlog = []
        if pieces:
            self.bytes_out += sum(map(len, pieces))
            transport.writelines(pieces)

    def abort(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------ lane switch

    def expect_lane_answer(self) -> asyncio.Future[str]:
        """Client, before sending LANE: a future for the lane the server answers."""
        self._lane_answer = self.loop.create_future()
        return self._lane_answer

    def lane_answered(self, lane: str) -> None:
        answer, self._lane_answer = self._lane_answer, None
        if answer is not None and not answer.done():
            answer.set_result(lane)

    def switch_to(self, transport: asyncio.BaseTransport) -> None:
        """Carry on over another lane's transport (shm, after a LANE switch)."""
        old = self.lane
        self.transport = cast(asyncio.Transport, transport)   # a stream transport, as above
        self.peer = peer_info(transport)
        self.lane = self.peer.lane
        self._write_paused = False
        self._switched(old or "?")

    def _switched(self, old_lane: str) -> None:
        pass

    # ------------------------------------------------------------ subclass hooks

    def _dispatch(self, events: list[c.Event]) -> None:
        """Hand each event to the call it is for, or to ``_on_event``. The events of
        every stream (a message, room to write) go the same way on both sides. A
        refused connection reads nothing more."""
        if self.refused:
            return
        calls = self.calls
        # Any: the checks below are on type(ev), which mypy does not narrow by.
        ev: Any
        for ev in events:
            t = type(ev)
            if t is MessageReceived:
                message = ev      # (compiled: typed, so its fields are C reads)
                call = calls.get(message.stream_id)
                if call is not None:
                    data = message.data
                    if type(data) is not bytes:
                        # A big message, read straight into a buffer of its own: a
                        # call (a Stream) hands it to a deserializer that parses
                        # buffers as it is; anything else gets bytes, as from grpc.aio.
                        big = getattr(call, "_big_message", None)
                        data = big(data) if big is not None else bytes(data)
                    if message.encoding:
                        data = Compressed(data, message.encoding)
                    call._on_message(data, message.end_stream)
            elif t is StreamWritable:
                call = calls.get(ev.stream_id)
                if call is not None:
                    call._on_writable()
            elif t is PingAcked:
                self.keepalive_acked(ev.payload)
            else:
                self._on_event(ev)

    def _on_event(self, ev: Any) -> None:
        """The events only one side has, or handles its own way."""
        raise NotImplementedError

    def _lost(self, reason: str) -> None:
        raise NotImplementedError


class Link(_LinkBase, asyncio.BufferedProtocol):
    """One connection: base of ClientLink and ServerLink. Transport plumbing,
    handshake timer, flushing, keepalive (in :class:`_LinkBase`); subclasses
    implement ``_on_event(ev)`` and ``_lost(reason)``."""

    role: c.Role
    # After a write that leaves this side idle but expecting an answer soon, keep
    # the process on its CPU for up to this long (by letting the loop go round
    # without blocking): waking a sleeping CPU costs tens of microseconds here,
    # more than a whole call's work. Only then: while calls are many or streams
    # flow, blocking lets frames batch. AdaptiveSpin stops it when answers don't
    # come that fast (or the peer shares our core); the shm transport does the
    # same with its rings.
    _AWAKE_US = 50.0
    # Server: the client's address on the TCP connection it dialled, when it then
    # moved to a local lane (set by the lanes' negotiator); context.peer() reports it.
    dialled_as: str | None = None
    # Server: the auth properties the client's port's credentials give (TLS, or local
    # credentials on TCP), on that port or on the local lane the client upgraded to
    # (set by the server link and the lanes' negotiator).
    tls: dict[str, list[bytes]] | None = None

    def __init__(self, options: Options, *, hello: handshake_pb2.Hello | None = None,
                 budget: MemoryBudget | None = None) -> None:
        _LinkBase.__init__(self, self.role, options, hello, budget, self._AWAKE_US)


class LaneAdapter(asyncio.BufferedProtocol):
    """The protocol a new lane's transport drives after a switch: everything goes
    to the link, except that ``connection_made`` means "switch", not "start".

    Buffered, as the link is: the shm lane copies its ring's records straight into
    the memory the connection lends (a big message's own buffer), the one copy out
    of shared memory, instead of joining them into bytes that are copied again.
    What the transport calls per read is the link's own method, bound here when the
    adapter is made: no call through the adapter per message."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.get_buffer = link.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = link.buffer_updated  # type: ignore[method-assign]
        self.data_received = link.data_received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.link.transport is not transport:
            self.link.switch_to(transport)

    def eof_received(self) -> bool:
        return self.link.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.connection_lost(exc)

    def pause_writing(self) -> None:
        self.link.pause_writing()

    def resume_writing(self) -> None:
        self.link.resume_writing()


def _with_user_agent(hello: handshake_pb2.Hello | None, user_agent: str) -> handshake_pb2.Hello:
    """The client's HELLO fields with its user agent: sent once per connection, the
    server hands it to every call's handler as the ``user-agent`` metadata gRPC
    clients send (so no call carries it)."""
    fields = handshake_pb2.Hello()
    if hello is not None:
        fields.CopyFrom(hello)
    fields.user_agent = user_agent
    return fields
