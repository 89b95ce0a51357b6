# Types for the compiled build of _pump.py (Cython's pure-Python mode, as _ring.pxd): the
# pump's state is C fields, the rings are typed ShmRings (their methods are C calls), the
# clock and the spin's deadlines are C integers. What the transport reads and writes is
# public. `_c_now_ns` and `_c_spin_pause` get their C bodies here; the .py's run in the
# pure-Python build only.
import cython

from rpc.transports._ring cimport ShmRing

cdef extern from *:
    """
    #include <time.h>
    /* What time.perf_counter_ns() reads on Linux, without a Python call. */
    static inline long long lanerpc_pump_now_ns(void) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        return (long long) now.tv_sec * 1000000000LL + now.tv_nsec;
    }
    /* A spin-wait hint between polls: the CPU does not speculate ahead through the
       loop (no pipeline flush when the polled line changes) and leaves the core to its
       hyperthread sibling meanwhile, which may be the peer we wait for. */
    static inline void lanerpc_pump_spin_pause(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #endif
    }
    """
    long long _c_now_ns "lanerpc_pump_now_ns" () nogil
    void _c_spin_pause "lanerpc_pump_spin_pause" () nogil

cdef bint _TYPED
cdef Py_ssize_t _JOIN_LIMIT, _OWN_RECORD
cdef long long _PREEMPTED_NS


cdef class RingPump:
    cdef object _owner
    cdef object _loop
    cdef object _call_soon
    cdef ShmRing _inbound
    cdef ShmRing _outbound
    cdef object _flags
    cdef Py_ssize_t _peer_closed_index
    cdef object _peer_bell
    cdef object _my_bell
    cdef object _protocol
    cdef bint _buffered_protocol
    cdef bint _bytes_protocol
    cdef public object buffer
    cdef public Py_ssize_t buffered
    cdef public bint writing_paused
    cdef public Py_ssize_t high_water
    cdef public Py_ssize_t low_water
    cdef public bint reading_paused
    cdef public bint closing
    cdef public bint finished
    cdef object _spin
    cdef public long long spin_ns
    cdef long long _slice_ns
    cdef long long _asked_at
    cdef public bint spinning
    cdef long long _spin_deadline
    cdef long long _spin_budget
    cdef Py_ssize_t _drain_step
    cdef Py_ssize_t _direct_copy

    cpdef void set_protocol(self, object protocol) except *
    cpdef bint peer_has_closed(self) except -1

    @cython.locals(size=Py_ssize_t, written=Py_ssize_t)
    cpdef void write(self, object data) except *
    @cython.locals(total=Py_ssize_t, spin=cython.longlong, run=list, run_size=Py_ssize_t,
                   size=Py_ssize_t)
    cpdef void writelines(self, object list_of_data) except *
    @cython.locals(ring=ShmRing, size=Py_ssize_t, written=Py_ssize_t, more=Py_ssize_t)
    cdef Py_ssize_t _write_ring(self, object data) except -1
    cdef void _enqueue(self, object data, Py_ssize_t start) except *
    @cython.locals(ring=ShmRing, size=Py_ssize_t, written=Py_ssize_t)
    cpdef void flush(self) except *
    cpdef void maybe_pause_writing(self) except *
    cpdef void maybe_resume_writing(self) except *
    cdef void _call_protocol(self, str method) except *

    @cython.locals(now=cython.longlong, budget=cython.longlong)
    cdef void _spin_for_answer(self) except *
    @cython.locals(ring=ShmRing, now=cython.longlong, before=cython.longlong,
                   slice_end=cython.longlong, caught=cython.bint)
    cpdef void loop_spin_slice(self) except *

    cpdef void on_doorbell(self) except *
    @cython.locals(more=cython.bint)
    cpdef void on_wake(self) except *
    @cython.locals(ring=ShmRing)
    cdef void _go_idle(self) except *
    @cython.locals(ring=ShmRing)
    cpdef bint drain_once(self) except -1
    @cython.locals(ring=ShmRing, budget=Py_ssize_t, half=Py_ssize_t, unannounced=Py_ssize_t,
                   filled=Py_ssize_t, moved=Py_ssize_t, pieces=list)
    cdef bint _drain_into(self) except -1
    @cython.locals(left=Py_ssize_t, room=Py_ssize_t, filled=Py_ssize_t, moved=Py_ssize_t,
                   offset=Py_ssize_t, size=Py_ssize_t, count=Py_ssize_t)
    cdef tuple _copy_out(self, object protocol, list pieces)
    @cython.locals(ring=ShmRing)
    cpdef void discard_inbound(self) except *
    cpdef void peer_closed(self) except *
    cpdef void clear_buffer(self) except *
