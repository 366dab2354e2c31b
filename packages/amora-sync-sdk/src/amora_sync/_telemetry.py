"""Optional tracing of commands (OpenTelemetry API, extra ``telemetry``).

With ``opentelemetry-api`` installed and a tracer provider set (the application's own, or one
passed to `AmoraClient`), each command gets a span ``amora.command send`` from `command()`
until its final answer, and its W3C trace context goes with every copy published (MQTT 5 user
properties ``traceparent`` / ``tracestate``, packages/amora-protocol/README.md "Trace
context"). The device continues the trace; its answer comes back with the context of its
``amora.command respond`` span, and the SDK records ``amora.command response`` under it, so
one trace holds the app, the device and the answer.

Without the package, or without a provider, nothing is recorded and no property is added.
The SDK never configures exporters: that is the application's choice.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

from amora_protocol import trace_context, trace_properties

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _AVAILABLE = True
except ImportError:  # pragma: no cover - the extra is not installed
    _AVAILABLE = False

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from amora_protocol import Action, CommandResponse

__all__ = ["CommandTracer"]

_SCOPE: Final = "amora_sync"


class CommandTracer:
    """Spans for commands, or nothing at all.

    Args:
        tracer_provider: An OpenTelemetry ``TracerProvider``; None: the global one, used
            only once the application has set one.
    """

    def __init__(self, tracer_provider: Any = None) -> None:  # noqa: ANN401 - optional dependency's type
        """Pick the provider; decide once whether anything is recorded."""
        self._tracer: Any = None
        if not _AVAILABLE:
            return
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return  # the API's placeholders: nothing would be recorded
        self._tracer = provider.get_tracer(_SCOPE)
        self._propagator = TraceContextTextMapPropagator()

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded."""
        return self._tracer is not None

    @contextlib.contextmanager
    def sending(self, device_id: str, command_id: str, action: Action) -> Iterator[list[tuple[str, str]]]:
        """A span around one command; yields the user properties that carry its context."""
        if self._tracer is None:
            yield []
            return
        with self._tracer.start_as_current_span(
            "amora.command send",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "amora.device_id": device_id,
                "amora.command.id": command_id,
                "amora.action": type(action).__name__,
            },
        ) as span:
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier)
            try:
                yield list(carrier.items())
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
                raise

    def received(self, response: CommandResponse, user_properties: Sequence[tuple[str, str]]) -> None:
        """Record the arrival of a verified answer under the device's span that sent it."""
        if self._tracer is None:
            return
        found = trace_context(user_properties)
        if found is None:
            return
        parent = self._propagator.extract(dict(trace_properties(found)))
        with self._tracer.start_as_current_span(
            "amora.command response",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "amora.device_id": response.device_id,
                "amora.command.id": response.command_id,
                "amora.command.outcome": str(getattr(response.status, "value", response.status)),
            },
        ):
            pass
