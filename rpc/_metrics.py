"""Call metrics through OpenTelemetry's metrics API, opt-in: ``rpc.enable_metrics()``.

Off (the default) this module holds ``recorder = None`` and imports nothing of
OpenTelemetry; a call checks that one global once when it starts. On, each call
gets a :class:`CallTally` that counts its messages and bytes (by wrapping the
call's serializer and deserializer) and records them, with its duration, when the
call ends. Opt-in, as grpc's own OpenTelemetry plugin is (``grpc_observability``'s
``OpenTelemetryPlugin(...).register_global()``): an installed OpenTelemetry must not
start costing every process a tally per call unasked.

Names are gRPC's (gRFC A66) where gRPC has one; the messages counts, which A66 does
not have, are lanerpc's own:

  client: grpc.client.attempt.started, grpc.client.attempt.duration,
          grpc.client.attempt.sent_total_compressed_message_size,
          grpc.client.attempt.rcvd_total_compressed_message_size,
          grpc.client.call.duration,
          lanerpc.client.attempt.sent_messages, lanerpc.client.attempt.rcvd_messages
  server: grpc.server.call.started, grpc.server.call.duration,
          grpc.server.call.sent_total_compressed_message_size,
          grpc.server.call.rcvd_total_compressed_message_size,
          lanerpc.server.call.sent_messages, lanerpc.server.call.rcvd_messages

Attributes: ``grpc.method`` ("pkg.Service/Method"), ``grpc.status`` ("OK",
"UNAVAILABLE", ...), ``grpc.target`` (client), and ``lanerpc.lane`` ("tcp", "unix",
"shm"; "none" for a call that never reached a connection). Differences from
grpc: a call is one attempt (a retried call's attempts are recorded as one), and
sizes are of the serialized messages, before compression (compression is off on the
local lanes anyway).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from rpc._compression import Compressed

from rpc._options import VERSION
from rpc._status import status_code

_NANOS_IN_S = 1e-9


class Recorder:
    """The instruments, made once from a meter."""

    def __init__(self, meter: Any) -> None:
        seconds = {"unit": "s"}
        size = {"unit": "By"}
        self.client_started = meter.create_counter(
            "grpc.client.attempt.started", unit="{attempt}",
            description="Number of client call attempts started")
        self.client_attempt_duration = meter.create_histogram(
            "grpc.client.attempt.duration", description="End-to-end time of a client call attempt",
            **seconds)
        self.client_call_duration = meter.create_histogram(
            "grpc.client.call.duration", description="Time a client call took, as the application sees it",
            **seconds)
        self.client_sent_bytes = meter.create_histogram(
            "grpc.client.attempt.sent_total_compressed_message_size",
            description="Bytes of the messages a client call attempt sent", **size)
        self.client_rcvd_bytes = meter.create_histogram(
            "grpc.client.attempt.rcvd_total_compressed_message_size",
            description="Bytes of the messages a client call attempt received", **size)
        self.client_sent_messages = meter.create_histogram(
            "lanerpc.client.attempt.sent_messages", unit="{message}",
            description="Messages a client call attempt sent")
        self.client_rcvd_messages = meter.create_histogram(
            "lanerpc.client.attempt.rcvd_messages", unit="{message}",
            description="Messages a client call attempt received")
        self.server_started = meter.create_counter(
            "grpc.server.call.started", unit="{call}", description="Number of server calls started")
        self.server_duration = meter.create_histogram(
            "grpc.server.call.duration", description="Time a server call took", **seconds)
        self.server_sent_bytes = meter.create_histogram(
            "grpc.server.call.sent_total_compressed_message_size",
            description="Bytes of the messages a server call sent", **size)
        self.server_rcvd_bytes = meter.create_histogram(
            "grpc.server.call.rcvd_total_compressed_message_size",
            description="Bytes of the messages a server call received", **size)
        self.server_sent_messages = meter.create_histogram(
            "lanerpc.server.call.sent_messages", unit="{message}",
            description="Messages a server call sent")
        self.server_rcvd_messages = meter.create_histogram(
            "lanerpc.server.call.rcvd_messages", unit="{message}",
            description="Messages a server call received")

    def client_call(self, target: str, method: str) -> CallTally:
        name = method.lstrip("/")
        self.client_started.add(1, {"grpc.method": name, "grpc.target": target})
        return CallTally(self, name, target)

    def server_call(self, method: str) -> CallTally:
        name = method.lstrip("/")
        self.server_started.add(1, {"grpc.method": name})
        return CallTally(self, name, None)


class CallTally:
    """One call's counts, recorded once when it ends."""

    __slots__ = ("_recorder", "_method", "_target", "_start",
                 "sent_messages", "sent_bytes", "rcvd_messages", "rcvd_bytes")

    def __init__(self, recorder: Recorder, method: str, target: str | None) -> None:
        self._recorder: Recorder | None = recorder
        self._method = method
        self._target = target
        self._start = time.perf_counter_ns()
        self.sent_messages = self.sent_bytes = self.rcvd_messages = self.rcvd_bytes = 0

    def counting_serializer(self, serialize: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def counted(message: Any) -> Any:
            data = serialize(message)
            self.sent_messages += 1
            self.sent_bytes += len(data)
            return data
        return counted

    def counting_deserializer(self, deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def counted(data: bytes) -> Any:
            self.rcvd_messages += 1
            self.rcvd_bytes += len(data)
            return deserialize(data)
        return counted

    def ended(self, code: int, lane: str | None, unread: Iterable[bytes | Compressed] = ()) -> None:
        """Record the call (once: later ends of the same call are ignored). ``unread``:
        messages received but not decoded yet (a unary response is decoded when the
        application awaits it, after the call's end): they count as received."""
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return
        for message in unread:
            self.rcvd_messages += 1
            self.rcvd_bytes += len(message.data if isinstance(message, Compressed) else message)
        seconds = (time.perf_counter_ns() - self._start) * _NANOS_IN_S
        attributes = {"grpc.method": self._method, "grpc.status": status_code(code).name,
                      "lanerpc.lane": lane or "none"}
        if self._target is not None:
            attributes["grpc.target"] = self._target
            recorder.client_attempt_duration.record(seconds, attributes)
            recorder.client_call_duration.record(seconds, attributes)
            recorder.client_sent_bytes.record(self.sent_bytes, attributes)
            recorder.client_rcvd_bytes.record(self.rcvd_bytes, attributes)
            recorder.client_sent_messages.record(self.sent_messages, attributes)
            recorder.client_rcvd_messages.record(self.rcvd_messages, attributes)
        else:
            recorder.server_duration.record(seconds, attributes)
            recorder.server_sent_bytes.record(self.sent_bytes, attributes)
            recorder.server_rcvd_bytes.record(self.rcvd_bytes, attributes)
            recorder.server_sent_messages.record(self.sent_messages, attributes)
            recorder.server_rcvd_messages.record(self.rcvd_messages, attributes)


class CountingHandler:
    """A method handler whose serializers count into a tally; the rest is the handler's."""

    def __init__(self, handler: Any, tally: CallTally) -> None:
        self._handler = handler
        self.request_deserializer = tally.counting_deserializer(
            handler.request_deserializer or _identity)
        self.response_serializer = tally.counting_serializer(
            handler.response_serializer or _identity)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


def _identity(data: Any) -> Any:
    return data


# None while metrics are off: the one thing a call checks.
recorder: Recorder | None = None


def enable_metrics(meter_provider: Any = None) -> None:
    """Record lanerpc's call metrics (see this module's docstring) with OpenTelemetry:
    through ``meter_provider``, or the global one (``opentelemetry.metrics``). Calls
    started from now on are counted. Needs ``opentelemetry-api``."""
    global recorder
    try:
        from opentelemetry import metrics
    except ImportError:
        raise RuntimeError("rpc.enable_metrics needs OpenTelemetry's API: "
                           "pip install opentelemetry-api (and an SDK to export)") from None
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    recorder = Recorder(provider.get_meter("lanerpc", VERSION))


def disable_metrics() -> None:
    """Stop recording: calls started from now on are not counted."""
    global recorder
    recorder = None
