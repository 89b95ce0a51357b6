# Types for the compiled build of _ring.py (Cython's pure-Python mode: this file augments
# the .py of the same name; see rpc/_compiled.py and setup.py). The counters are unsigned
# 64-bit as in the shared header; sizes and offsets within the ring are Py_ssize_t (a
# ring is at most 1 GiB). Each `_c_*` primitive the .py names gets its C body here: the
# .py's own bodies of them run in the pure-Python build only.
import cython

cdef extern from *:
    """
    /* lanerpc shm ring primitives: x86-64 only (the shm lane refuses other CPUs). */
    static inline unsigned char *lanerpc_ring_base(PyObject *view) {
        return (unsigned char *) PyMemoryView_GET_BUFFER(view)->buf;
    }
    static inline unsigned long long lanerpc_ring_load_u64(unsigned char *base, Py_ssize_t index) {
        return __atomic_load_n((unsigned long long *) base + index, __ATOMIC_ACQUIRE);
    }
    static inline void lanerpc_ring_store_u64(unsigned char *base, Py_ssize_t index,
                                              unsigned long long value) {
        __atomic_store_n((unsigned long long *) base + index, value, __ATOMIC_RELEASE);
    }
    static inline unsigned int lanerpc_ring_load_u32(unsigned char *base, Py_ssize_t offset) {
        unsigned int value;
        memcpy(&value, base + offset, sizeof value);   /* one fetch, into a local */
        __atomic_signal_fence(__ATOMIC_SEQ_CST);      /* and never fetched again */
        return value;
    }
    static inline void lanerpc_ring_store_u32(unsigned char *base, Py_ssize_t offset,
                                              unsigned int value) {
        memcpy(base + offset, &value, sizeof value);
    }
    static inline PyObject *lanerpc_ring_copy_out(unsigned char *base, Py_ssize_t offset,
                                                  Py_ssize_t size) {
        return PyBytes_FromStringAndSize((const char *) base + offset, size);
    }
    static inline void lanerpc_ring_fence(PyObject *unused) {
        (void) unused;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    """
    unsigned char *_c_base "lanerpc_ring_base" (object view)
    unsigned long long _c_load_u64 "lanerpc_ring_load_u64" (unsigned char *base, Py_ssize_t index) nogil
    void _c_store_u64 "lanerpc_ring_store_u64" (unsigned char *base, Py_ssize_t index, unsigned long long value) nogil
    unsigned int _c_load_u32 "lanerpc_ring_load_u32" (unsigned char *base, Py_ssize_t offset) nogil
    void _c_store_u32 "lanerpc_ring_store_u32" (unsigned char *base, Py_ssize_t offset, unsigned int value) nogil
    bytes _c_copy_out "lanerpc_ring_copy_out" (unsigned char *base, Py_ssize_t offset, Py_ssize_t size)
    void _c_fence "lanerpc_ring_fence" (object unused)

cdef bint _TYPED
cdef Py_ssize_t _RECORD_HEADER
cdef Py_ssize_t _HEAD, _TAIL, _READER_WAITING, _WRITER_WAITING
cdef object _LENGTH


cdef class StoreLoadFence:
    cdef object _lock


cdef class ShmRing:
    cdef Py_ssize_t _capacity
    cdef unsigned long long _mask
    cdef object _ctl
    cdef object _data
    cdef unsigned char *_ctl_at
    cdef unsigned char *_data_at
    cdef bint _released
    cdef object _lock
    cdef unsigned long long _head
    cdef unsigned long long _seen_tail
    cdef unsigned long long _tail
    cdef unsigned long long _seen_head

    @cython.locals(tail=cython.ulonglong)
    cdef unsigned long long _refresh_tail(self) except? 0xffffffffffffffff
    cpdef Py_ssize_t free_space(self) except -1
    cpdef bint tail_moved(self) except -1

    @cython.locals(wanted=Py_ssize_t, capacity=Py_ssize_t, head=cython.ulonglong,
                   free=Py_ssize_t, chunk=Py_ssize_t, mask=cython.ulonglong, pos=Py_ssize_t,
                   start=Py_ssize_t, end=Py_ssize_t, first=Py_ssize_t)
    cpdef Py_ssize_t write(self, object data) except -1

    cpdef bint has_data(self) except -1
    cpdef unsigned long long pending(self) except? 0xffffffffffffffff
    @cython.locals(head=cython.ulonglong, tail=cython.ulonglong)
    cdef unsigned long long _fetch_head(self) except? 0xffffffffffffffff
    @cython.locals(available=cython.ulonglong, capacity=Py_ssize_t, at=Py_ssize_t,
                   first=Py_ssize_t, length=cython.ulonglong)
    cdef Py_ssize_t _record_length(self, unsigned long long pos, unsigned long long head) except -1
    @cython.locals(head=cython.ulonglong, tail=cython.ulonglong, length=Py_ssize_t,
                   start=Py_ssize_t, end=cython.ulonglong)
    cpdef bytes read(self, object max_bytes=*)
    @cython.locals(head=cython.ulonglong)
    cpdef tuple peek(self, object max_bytes=*)
    @cython.locals(limit=Py_ssize_t, capacity=Py_ssize_t, mask=cython.ulonglong, pieces=list,
                   total=Py_ssize_t, pos=cython.ulonglong, length=Py_ssize_t, start=Py_ssize_t,
                   end=Py_ssize_t)
    cdef tuple _collect(self, unsigned long long head, object max_bytes)
    cpdef void consume(self, unsigned long long end) except *

    cpdef bint wake_reader(self) except -1
    cpdef bint wake_writer(self) except -1
    cdef bint _take(self, Py_ssize_t index) except -1
    cpdef bint sleep_reader(self) except -1
    cpdef bint sleep_writer(self) except -1
