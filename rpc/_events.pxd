# Types for the compiled build of _events.py (see rpc/_wire.pxd): each event an
# extension type whose fields are C slots, made without running Python code. The
# fields stay objects: an owner reads back exactly what the connection put in.

cdef class Event:
    pass


cdef class HelloReceived(Event):
    cdef public object hello


cdef class HandshakeDone(Event):
    cdef public object hello


cdef class RequestReceived(Event):
    cdef public object stream_id
    cdef public object method
    cdef public object timeout
    cdef public object metadata
    cdef public object end_stream


cdef class InitialMetadataReceived(Event):
    cdef public object stream_id
    cdef public object metadata


cdef class MessageReceived(Event):
    cdef public object stream_id
    cdef public object data
    cdef public object end_stream
    cdef public object encoding


cdef class EndOfInput(Event):
    cdef public object stream_id


cdef class StreamEnded(Event):
    cdef public object stream_id
    cdef public object code
    cdef public object details
    cdef public object metadata
    cdef public object not_started
    cdef public object by_peer


cdef class StreamWritable(Event):
    cdef public object stream_id


cdef class PingReceived(Event):
    cdef public object payload


cdef class PingAcked(Event):
    cdef public object payload


cdef class LaneChange(Event):
    cdef public object lane


cdef class GoAwayReceived(Event):
    cdef public object last_stream_id
    cdef public object code
    cdef public object reason
