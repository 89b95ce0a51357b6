# Types for the compiled build of _streams.py (see rpc/_wire.pxd): a Stream's fields
# are C fields, read and written by the compiled connection without a dict look-up.
import cython

cdef dict _BY_STATE
cdef object _OPEN

@cython.locals(moves=dict)
cpdef object transition(object state, object event)


cdef class Stream:
    cdef public object id
    cdef public object state
    cdef public long long send_window
    cdef public long long recv_window
    cdef public bint closing
    cdef public object outbox
    cdef public long long outbox_bytes
    cdef public long long announced
    cdef public object assembly
    cdef public list partial
    cdef public long long partial_size
    cdef public long long partial_credited
    cdef public long long held
    cdef public long long held_bytes
    cdef public long long held_credited
    cdef public bint headers_sent
    cdef public bint headers_received
    cdef public bint discarding
    cdef public bint want_writable
    cdef public long long credit_pending
    cdef public object trailers_pending
    cdef public long long out_batch
