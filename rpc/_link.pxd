# Types for the compiled build of _link.py (see rpc/_wire.pxd): the link's state is
# C fields of an extension type (_LinkBase; Link adds asyncio.BufferedProtocol as a
# second base, in Python), the connection a typed Connection (its per-message
# methods C calls), the per-read and per-flush methods cpdef. What the owners,
# transports and tests read stays public; _dispatch, _on_event and _lost stay
# Python methods: ServerLink and ClientLink override them.
import cython

from rpc._connection cimport Connection
from rpc._events cimport MessageReceived, PingAcked, StreamWritable

cdef object _perf_counter_ns
cdef Py_ssize_t _BIG_WRITE
cdef int _KA_STEPS


cdef class _LinkBase:
    cdef public object options
    cdef public Connection conn
    cdef public object loop
    cdef public object transport
    cdef public object peer
    cdef public object lane
    cdef public object ready
    cdef public object closed
    cdef public object close_reason
    cdef public bint refused
    cdef public object _lane_answer
    cdef public bint _flush_scheduled
    cdef public bint _writer_yielding
    cdef public object _handshake_timer
    cdef public bint _write_paused
    cdef public list _drain_waiters
    cdef object _drained
    cdef public list _backlog
    cdef public object _awake
    cdef public long long _awake_until
    cdef public bint _awake_caught
    cdef public long long _awake_switches
    cdef public bint _awake_queued
    cdef public long long bytes_in
    cdef public long long bytes_out
    cdef public bint tls_transport
    cdef public dict calls
    cdef public object _ka_time
    cdef public object _ka_timer
    cdef public object _ka_payload
    cdef public long long _ka_in_at_ping
    cdef public double _last_input
    cdef public long long _ka_seen
    cdef public long long _pings_without_data
    cdef public long long _data_mark

    cpdef object get_buffer(self, Py_ssize_t sizehint)
    cpdef buffer_updated(self, Py_ssize_t nbytes)
    cpdef data_received(self, object data)
    cdef _received(self, list events)

    @cython.locals(calls=dict, message=MessageReceived)
    cpdef _dispatch(self, list events)
    cpdef stream_queued(self, bint awaiting_answer)
    cpdef flush_soon(self)
    cpdef writer_yields(self)
    cpdef stay_awake(self)

    @cython.locals(size=Py_ssize_t, data=list, later=list)
    cpdef flush(self)

    @cython.locals(step=Py_ssize_t, batched=Py_ssize_t, size=Py_ssize_t, i=Py_ssize_t,
                   start=Py_ssize_t, batch=list)
    cdef _write_pieces(self, object data)
