"""OpenTelemetry for the agent: its instruments, trace context on MQTT, the process's exporters.

Instruments (docs/observability.md lists them with their units) come from the meter provider
the agent is given, by default the process's global one: a library user who sets up nothing
pays for no-op instruments only. The ``amora-agent`` process sets the global providers from
the environment and its ``[telemetry]`` table (:func:`configure_process`):

- ``APPLICATIONINSIGHTS_CONNECTION_STRING``: the Azure Monitor distro (extra ``azure``);
- else ``OTEL_EXPORTER_OTLP_ENDPOINT``: OTLP over HTTP (extra ``otlp``);
- and, unless ``prometheus = false``, a Prometheus endpoint on loopback (127.0.0.1:9464),
  so a player's metrics are always somewhere a local scraper or an operator on the box can
  read them.

Traces are recorded only when a tracer provider was set (Azure, OTLP, or a test's): with
none, :attr:`AgentTelemetry.tracing` is false and the command path reads no trace context
and starts no span.

Trace context travels as MQTT 5 user properties ``traceparent`` and ``tracestate`` (W3C
Trace Context; packages/amora-protocol/README.md, "Trace context"). They are outside the
signed envelope: a forged value can only misfile a trace, never change what runs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Final

import msgspec
from opentelemetry import metrics, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from amora_agent._errors import ConfigError
from amora_protocol import trace_context, trace_properties

if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping, Sequence

    import structlog
    from opentelemetry.context import Context
    from opentelemetry.sdk.metrics.export import MetricReader

    from amora_agent._config import TelemetryConfig
__all__ = [
    "AZURE_ENV",
    "OTLP_ENV",
    "SECONDS_BUCKETS",
    "AgentTelemetry",
    "ProcessTelemetry",
    "add_trace_context",
    "configure_process",
]

AZURE_ENV: Final = "APPLICATIONINSIGHTS_CONNECTION_STRING"
OTLP_ENV: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
SECONDS_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram bounds for durations in seconds (the SDK's default bounds suit milliseconds)."""
_SCOPE: Final = "amora_agent"
_PROPAGATOR: Final = TraceContextTextMapPropagator()


class AgentTelemetry:
    """The agent's instruments and tracer.

    Args:
        meter_provider: Where the instruments live (default: the global provider).
        tracer_provider: Record spans here (default: the global provider, if one was set).
    """

    def __init__(
        self,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        """Create the instruments."""
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(_SCOPE)
        if tracer_provider is None:
            tracer_provider = trace.get_tracer_provider()
            # The API's placeholder until a provider is set: nothing would be recorded.
            self.tracing = not isinstance(tracer_provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        else:
            self.tracing = True
        self.tracer = tracer_provider.get_tracer(_SCOPE)
        self.commands = meter.create_counter(
            "amora_agent_commands",
            unit="{command}",
            description="Commands answered, by outcome (succeeded, failed, rejected, accepted, duplicate, "
            "unanswered) and reject reason.",
        )
        self.command_duration = meter.create_histogram(
            "amora_agent_command_duration",
            unit="s",
            description="Time from a command leaving the queue to its answer (verification, log, MPD), by outcome.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.states_published = meter.create_counter(
            "amora_agent_states_published", unit="{state}", description="Signed states published."
        )
        self.mqtt_reconnects = meter.create_counter(
            "amora_agent_mqtt_reconnects",
            unit="{connection}",
            description="Broker connections after the first (failover, failback, recovery).",
        )
        self.mqtt_disconnected = meter.create_counter(
            "amora_agent_mqtt_disconnected",
            unit="s",
            description="Time spent without a broker connection after losing one (added on reconnect).",
        )
        self.mpd_reconnects = meter.create_counter(
            "amora_agent_mpd_reconnects", unit="{connection}", description="MPD connections after the first."
        )
        # An up-down counter, not a gauge: several agents in one process (simulated fleets)
        # add up instead of overwriting each other.
        self.mqtt_connected = meter.create_up_down_counter(
            "amora_agent_mqtt_connected",
            unit="{connection}",
            description="Broker connections the process's agents hold now (1 for a player's agent while online).",
        )

    def answered(self, status: str, reason: str | None) -> None:
        """Count one answer (or one command left unanswered: ``status="unanswered"``)."""
        self.commands.add(1, {"outcome": status, "reason": reason or ""})

    @staticmethod
    def extract(user_properties: Sequence[tuple[str, str]]) -> Context | None:
        """The trace context a message carried in its user properties (None: none or malformed).

        Validated by `amora_protocol.trace_context` first: only a well-formed value reaches
        the propagator.
        """
        found = trace_context(user_properties)
        return None if found is None else _PROPAGATOR.extract(dict(trace_properties(found)))

    @staticmethod
    def inject() -> list[tuple[str, str]]:
        """User properties carrying the current span's trace context."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return list(carrier.items())


def add_trace_context(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Structlog processor: the current span's ``trace_id`` and ``span_id``, when there is one.

    Log lines written while a command or a request is traced then join the trace in any
    backend that correlates by these ids (Application Insights, Grafana, Loki).
    """
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


@dataclasses.dataclass(kw_only=True)
class ProcessTelemetry:
    """What :func:`configure_process` started (the exporter chosen, the metrics address)."""

    exporter: str
    prometheus_address: tuple[str, int] | None = None
    _shutdown: list[Callable[[], Any]] = dataclasses.field(default_factory=list)

    def shutdown(self) -> None:
        """Flush the exporters and stop the metrics endpoint."""
        for stop in reversed(self._shutdown):
            stop()
        self._shutdown.clear()


def configure_process(
    config: TelemetryConfig,
    *,
    device_id: str,
    version: str,
    logger: structlog.typing.FilteringBoundLogger,
    environ: dict[str, str] | None = None,
) -> ProcessTelemetry:
    """Set the process's global meter and tracer providers (the ``amora-agent`` command only).

    Raises:
        ConfigError: An exporter is asked for by the environment but not installed.
    """
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415 - process set-up only
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    env = dict(os.environ if environ is None else environ)
    attributes = {"service.version": version, "service.instance.id": device_id}
    if not env.get("OTEL_SERVICE_NAME"):  # it names the service when set; ours would win over it
        attributes["service.name"] = "amora-agent"
    resource = Resource.create(attributes)
    readers: list[MetricReader] = []
    result = ProcessTelemetry(exporter="prometheus")
    # OpenTelemetry's own variables for the Prometheus exporter win over the file.
    host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST") or config.prometheus_host
    try:
        port = int(env.get("OTEL_EXPORTER_PROMETHEUS_PORT") or config.prometheus_port)
    except ValueError as exc:
        raise ConfigError(f"OTEL_EXPORTER_PROMETHEUS_PORT is not a port number: {exc}") from exc
    config = msgspec.structs.replace(config, prometheus_host=host, prometheus_port=port)
    if config.prometheus:
        reader, address, stop = _prometheus(config, logger)
        if reader is not None:
            readers.append(reader)
            result.prometheus_address = address
            result._shutdown.append(stop)  # noqa: SLF001 - built here
    if env.get(AZURE_ENV, "").strip():
        result.exporter = "azure"
        _azure(env[AZURE_ENV], resource, readers)
    elif env.get(OTLP_ENV, "").strip():
        result.exporter = "otlp"
        result._shutdown.append(_otlp(resource, readers))  # noqa: SLF001 - built here
    elif readers:
        provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        metrics.set_meter_provider(provider)
        result._shutdown.append(provider.shutdown)  # noqa: SLF001 - built here
    logger.info(
        "telemetry configured",
        exporter=result.exporter,
        metrics_endpoint=None
        if result.prometheus_address is None
        else "http://{}:{}/metrics".format(*result.prometheus_address),
    )
    return result


def _prometheus(
    config: TelemetryConfig, logger: structlog.typing.FilteringBoundLogger
) -> tuple[Any, tuple[str, int] | None, Callable[[], None]]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=True)
    try:
        server, thread = start_http_server(config.prometheus_port, addr=config.prometheus_host, registry=registry)
    except OSError as exc:
        # Telemetry must never keep a player from playing: say so and go on without it.
        logger.warning(
            "metrics endpoint not served",
            address=f"{config.prometheus_host}:{config.prometheus_port}",
            error=str(exc),
            fix="free the port or set [telemetry] prometheus_port (0: any free port)",
        )
        return None, None, lambda: None
    reader = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=registry)
    host, port = server.server_address[:2]

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return reader, (str(host), int(port)), stop


def _azure(connection_string: str, resource: Any, readers: list[Any]) -> None:  # noqa: ANN401 - SDK types
    try:
        from azure.monitor.opentelemetry import configure_azure_monitor  # noqa: PLC0415 - optional extra
    except ImportError as exc:
        raise ConfigError(
            f"{AZURE_ENV} is set but the Azure Monitor distro is not installed: "
            "pip install 'amora-device-agent[azure]' (or unset the variable)"
        ) from exc
    configure_azure_monitor(
        connection_string=connection_string,
        resource=resource,
        metric_readers=readers,
        logger_name="amora_agent",
        enable_live_metrics=False,
    )


def _otlp(resource: Any, readers: list[Any]) -> Callable[[], None]:  # noqa: ANN401 - SDK types
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"{OTLP_ENV} is set but the OTLP exporter is not installed: "
            "pip install 'amora-device-agent[otlp]' (or unset the variable)"
        ) from exc
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    meter_provider = MeterProvider(
        metric_readers=[*readers, PeriodicExportingMetricReader(OTLPMetricExporter())],
        resource=resource,
        shutdown_on_exit=False,
    )
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    metrics.set_meter_provider(meter_provider)
    trace.set_tracer_provider(tracer_provider)

    def stop() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return stop
