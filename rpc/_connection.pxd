# Types for the compiled build of _connection.py (see rpc/_wire.pxd): the connection's
# fields are C fields, its per-frame helpers C methods (cdef: called only from here),
# its counters and windows C integers. Windows stay below 2**32 (checked on receipt),
# so a long long never overflows. What the link and the tests read is public.
import cython

from rpc._wire cimport FrameDecoder
from rpc._streams cimport Stream, transition
from rpc cimport _wire

# The frame types and flags this module imports from _wire, as C ints here.
cdef int CANCEL, GOAWAY, HEADERS, HELLO, LANE, MESSAGE, PING, TRAILERS, WINDOW_UPDATE
cdef int FLAG_ACK, FLAG_END_STREAM, FLAG_MORE, FLAG_NO_MESSAGE, FLAG_WITH_MESSAGE, FLAG_SIZE
cdef int FLAG_NOT_STARTED, ENCODING_MASK, ENCODING_SHIFT
cdef object _pack_header, _pack_header_and_size, _pack_u32
cdef object _unpack_header, _unpack_header_and_size
cdef Py_ssize_t _HEADER_SIZE
cdef long long _MAX_WINDOW, _MAX_STREAM_ID, _ANNOUNCE_FROM
cdef object _MAX_TIMEOUT_US
cdef object _OPEN, _HALF_CLOSED_LOCAL, _HALF_CLOSED_REMOTE, _CLOSED
cdef object _SEND_END, _RECV_END, _SEND_MESSAGE, _RECV_MESSAGE, _CLOSE


cdef class Connection:
    cdef public object role
    cdef bint _server
    cdef public object limits
    cdef long long _max_metadata
    cdef long long _max_message
    cdef long long _stream_window
    cdef long long _max_streams
    cdef long long _peer_max_frame
    cdef long long _peer_max_metadata
    cdef long long _peer_stream_window
    cdef public object peer
    cdef public object peer_hello
    cdef public object version
    cdef public FrameDecoder _decoder
    cdef public list _out
    cdef public Py_ssize_t _out_bytes
    cdef public long long _batch
    cdef public long long _batch_first_sid
    cdef public object _dropping
    cdef list _later
    cdef public long long streams_withdrawn
    cdef public dict streams
    cdef public long long _last_peer_stream
    cdef public long long _next_stream_id
    cdef public long long send_window
    cdef public long long _recv_window
    cdef public long long _recv_window_pending
    cdef public long long _credit_quarter
    cdef public long long buffered
    cdef public long long _held_messages
    cdef public long long _reserved
    cdef public object _spare
    cdef Py_ssize_t _spare_alone
    cdef public bint _announce_sizes
    cdef public object budget
    cdef public object _blocked
    cdef public bint goaway_sent
    cdef public object goaway_received
    cdef public long long ping_bytes_sent
    cdef public bint closed
    cdef public bint handshake_done
    cdef public bint _accept_pending
    cdef public object _lane_asked
    cdef public bint _lane_answered

    cdef _emit(self, object data)
    cdef _emit_with_message(self, bytes head, object message, bytes tail)

    @cython.locals(pending=cython.longlong, quarter=cython.longlong)
    cpdef list data_to_send(self)

    cpdef list receive_data(self, object data)
    cpdef object receive_buffer(self)
    cpdef list received_into(self, Py_ssize_t nbytes)

    @cython.locals(events=list, decoder=FrameDecoder, ftype=int, flags=int)
    cdef list _read_frames(self)

    cdef _require_handshake(self)
    cdef bint _on_hello(self, int flags, object sid, object payload, list events) except -1

    @cython.locals(stream=Stream, end=bint, end_after_message=bint, message_encoding=int)
    cdef _on_headers(self, int flags, object sid, object payload, list events)

    cdef _discard_message(self, object message)
    cdef _check_known(self, object sid)

    @cython.locals(stream=Stream, size=cython.longlong, total=cython.longlong,
                   more=int, end=bint, encoding=int)
    cdef _on_message(self, int flags, object sid, object payload, list events)

    @cython.locals(stream=Stream, total=cython.longlong, limit=cython.longlong)
    cdef _on_message_size(self, object sid, object payload, list events)

    @cython.locals(have=Py_ssize_t)
    cdef object _message_buffer(self, Py_ssize_t size)
    cdef Py_ssize_t _spare_refs(self) except -1

    cdef _reject_message(self, Stream stream, bint more, int code, str detail, list events)
    cdef _let_go_partial(self, Stream stream)
    cdef _release(self, long long size)
    cdef _relieve(self, Stream stream, list events)
    cdef _recv_end(self, Stream stream)

    @cython.locals(stream=Stream)
    cdef _on_trailers(self, int flags, object sid, object payload, list events)

    @cython.locals(stream=Stream)
    cdef _on_cancel(self, int flags, object sid, object payload, list events)

    @cython.locals(stream=Stream, inc=cython.longlong)
    cdef _on_window_update(self, int flags, object sid, object payload, list events)

    cdef _on_ping(self, int flags, object sid, object payload, list events)
    cdef bint _on_lane(self, int flags, object sid, object payload, list events) except -1
    cdef _on_goaway(self, int flags, object sid, object payload, list events)

    @cython.locals(pending=cython.longlong)
    cdef _credit_stream(self, Stream stream, long long size)

    @cython.locals(stream=Stream, size=cython.longlong, stream_size=cython.longlong,
                   extra=cython.longlong)
    cpdef consume(self, object stream_id)

    @cython.locals(pending=cython.longlong, quarter=cython.longlong)
    cdef _flush_credit(self)

    @cython.locals(stream=Stream)
    cdef _release_blocked(self, list events)

    cdef _check_can_send(self)

    @cython.locals(stream=Stream, data=object, offset=Py_ssize_t, remaining=Py_ssize_t,
                   allowance=cython.longlong, n=Py_ssize_t, last=bint, flags=int,
                   max_frame=cython.longlong, end=bint, encoded=int)
    cdef _pump(self, Stream stream, list events)

    @cython.locals(sid=cython.longlong, timeout_us=cython.longlong, scaled=cython.double,
                   block=bytes, payload=bytes, stream=Stream, size=Py_ssize_t)
    cpdef object start_request(self, object method, object timeout, object metadata,
                               bint end_stream=*, object message=*, int encoding=*)

    @cython.locals(stream=Stream, size=Py_ssize_t)
    cpdef bint send_message(self, object stream_id, object data, bint end_stream=*,
                            int encoding=*) except -1

    @cython.locals(stream=Stream, payload=bytes, size=Py_ssize_t)
    cpdef end_stream(self, object stream_id, int code, object details=*, object metadata=*,
                     object message=*, int encoding=*)

    @cython.locals(stream=Stream)
    cpdef bint wait_writable(self, object stream_id) except -1

    cdef bytes _fitting_trailers(self, int code, str details, object metadata)

    cdef _drop(self, Stream stream)
    cdef _unqueue(self, Stream stream)

    @cython.locals(dropping=dict, out=list, kept=list, count=Py_ssize_t, kept_bytes=Py_ssize_t,
                   restored=cython.longlong, i=Py_ssize_t, j=Py_ssize_t, whole=Py_ssize_t,
                   size=Py_ssize_t, length=Py_ssize_t, ftype=int, flags=int)
    cdef _drop_frames(self)
    cpdef list take_events(self)
