# Types for the compiled build of _wire.py (Cython's pure-Python mode: this file
# augments the .py of the same name; see rpc/_compiled.py and setup.py). Only the
# hot path is typed: the frame decoder and the codec functions a call goes through.
# Lengths and offsets are Py_ssize_t; a u64 read off the wire (a request's timeout) is an
# unsigned long long until it is checked. Payloads are objects: bytes, or a bytearray /
# memoryview for a big frame read into memory of its own. Where `at` is an unsigned char
# pointer, the bytes of a bytes or bytearray object are read in place (_wire._TYPED).
import cython

cdef bint _TYPED
cdef int _LAST_TYPE
cdef object _pack_header, _unpack_header
cdef object _U32, _U16, _TRAILER_HEAD, _REQUEST_HEAD
cdef tuple _BARE_TRAILERS

cpdef bytes frame(int ftype, int flags, object stream_id, object payload=*)

@cython.locals(kb=bytes, vb=bytes, parts=list)
cpdef bytes encode_metadata(object metadata)

@cython.locals(end=Py_ssize_t, klen=Py_ssize_t, vlen=Py_ssize_t, count=Py_ssize_t,
               i=Py_ssize_t, out=list, kraw=bytes, vraw=bytes, key=str)
cpdef tuple decode_metadata(object buf, Py_ssize_t offset=*)

@cython.locals(at=cython.p_uchar, klen=Py_ssize_t, vlen=Py_ssize_t, count=Py_ssize_t,
               out=list, kraw=bytes, vraw=bytes, key=str)
cdef tuple _decode_metadata_in_place(object buf, Py_ssize_t offset, Py_ssize_t end)

@cython.locals(mb=bytes)
cpdef bytes encode_request_headers_block(str method, object timeout_us, bytes block)

@cython.locals(mlen=Py_ssize_t, start=Py_ssize_t, end=Py_ssize_t, method=str,
               at=cython.p_uchar, i=int, timeout_us=cython.ulonglong,
               method_bytes=bytes)
cpdef tuple decode_request_headers(object payload)

@cython.locals(size=Py_ssize_t, at=cython.p_uchar)
cpdef tuple split_message(object payload)

cpdef bytes bare_trailers(int code)

@cython.locals(dlen=Py_ssize_t, start=Py_ssize_t, end=Py_ssize_t, at=cython.p_uchar)
cpdef tuple decode_trailers(object payload)


cdef class FrameDecoder:
    cdef bytearray _buf
    cdef object _view
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _end
    cdef Py_ssize_t _offered
    cdef bint _filled_all
    cdef public Py_ssize_t max_frame_size
    cdef public object handshake_limit
    cdef bint _magic_pending
    cdef tuple _big_header
    cdef object _big_target
    cdef object _big_payload
    cdef Py_ssize_t _big_filled
    cdef public int frame_type
    cdef public int frame_flags
    cdef public object frame_stream

    @cython.locals(size=Py_ssize_t, filled=Py_ssize_t, n=Py_ssize_t)
    cpdef feed(self, object data)

    cpdef buffer_updated(self, Py_ssize_t nbytes)
    cpdef object get_buffer(self)

    @cython.locals(pos=Py_ssize_t, end=Py_ssize_t, buf=bytearray, at=cython.p_uchar,
                   length=cython.longlong, ftype=int, flags=int, sid=cython.longlong,
                   limit=cython.longlong, start=Py_ssize_t, stop=Py_ssize_t, payload=bytes)
    cpdef object next_frame(self, object sink=*)

    cdef bint _magic_read(self) except -1
    cdef object _big_frame(self)
