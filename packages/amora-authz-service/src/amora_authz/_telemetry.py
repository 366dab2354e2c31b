"""OpenTelemetry for the service: instruments, the exporters, the ``/metrics`` text.

Strategy: every instrument lives on a meter provider owned by one :class:`Telemetry`, and a
Prometheus reader over a registry of its own always feeds ``/metrics`` (the library writes
HELP, TYPE, units and label escaping). Where else the data goes is chosen from the
environment, as the OpenTelemetry conventions name it:

- ``APPLICATIONINSIGHTS_CONNECTION_STRING``: the Azure Monitor OpenTelemetry distro
  (metrics and traces to Application Insights; the JSON log lines stay on stderr, which the
  container platform ships, with ``trace_id`` and ``span_id`` to join them to the spans);
- else ``OTEL_EXPORTER_OTLP_ENDPOINT``: OTLP over HTTP (metrics and traces);
- else ``/metrics`` only, and traces are not recorded.

The instrument names and units are listed in docs/observability.md.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, generate_latest

from amora_authz._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence

    from opentelemetry.metrics import CallbackOptions, Counter, Observation
    from opentelemetry.sdk.metrics.export import MetricReader

    from amora_authz._fleet import BrokerStatus

__all__ = ["METRICS_CONTENT_TYPE", "Metrics", "Telemetry", "add_trace_context", "exporter_from_env"]

METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4"
"""The Prometheus text format every scraper reads (Litestar adds ``charset=utf-8``)."""
AZURE_ENV: Final = "APPLICATIONINSIGHTS_CONNECTION_STRING"
OTLP_ENV: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
_SCOPE: Final = "amora_authz"
SECONDS_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram bounds for durations in seconds (the SDK's default bounds suit milliseconds)."""

# Counter name (as Prometheus shows it, without `_total`) -> (unit, HELP text).
_COUNTERS: Final[dict[str, tuple[str, str]]] = {
    "amora_authz_http_requests": ("{request}", "HTTP requests answered, by method, route and status."),
    "amora_authz_sessions_created": ("{session}", "Sessions created (POST /v1/sessions answered 201)."),
    "amora_authz_sessions_refreshed": ("{session}", "Sessions refreshed (a new grant for a live session)."),
    "amora_authz_sessions_deleted": ("{session}", "Sessions ended by their user (logout)."),
    "amora_authz_sessions_expired": ("{session}", "Sessions removed by the expiry sweep."),
    "amora_authz_sessions_refused": (
        "{session}",
        "Session creations and refreshes refused, by operation and reason (the error code answered).",
    ),
    "amora_authz_token_rejected": ("{token}", "User tokens rejected, by reason code."),
    "amora_authz_rate_limited": ("{request}", "Requests refused by a rate limit, by limit."),
    "amora_authz_devices_revoked": ("{device}", "Devices revoked."),
    "amora_authz_unlinks": ("{link}", "User-device links removed."),
    "amora_authz_broker_reconcile_passes": (
        "{pass}",
        "Reconcile passes on a broker, by broker, kind (full, scoped) and outcome (ok, failed).",
    ),
    "amora_authz_broker_failures": ("{pass}", "Reconcile passes a broker did not complete, by broker."),
}

# Broker gauges: (name, BrokerStatus attribute, unit, HELP text).
_BROKER_GAUGES: Final = (
    ("amora_authz_broker_reachable", "reachable", "1", "1 when the broker answered the service's last exchange."),
    (
        "amora_authz_broker_persisting",
        "persisting",
        "1",
        "1 when the broker's dynsec file holds what it was told, 0 when not (absent: unknown).",
    ),
    ("amora_authz_broker_behind", "behind", "1", "1 while the broker misses a change the database holds."),
    (
        "amora_authz_broker_pending_names",
        "pending_names",
        "{name}",
        "Role, group and client names waiting to be re-applied on the broker.",
    ),
    (
        "amora_authz_broker_token_refused",
        "token_refused",
        "1",
        "Token mode: 1 while the broker refuses the service's probe token (every session token too).",
    ),
)


def exporter_from_env(environ: Mapping[str, str] | None = None) -> str:
    """Where telemetry goes besides ``/metrics``: ``azure``, ``otlp`` or ``prometheus``."""
    env = os.environ if environ is None else environ
    if env.get(AZURE_ENV, "").strip():
        return "azure"
    if env.get(OTLP_ENV, "").strip():
        return "otlp"
    return "prometheus"


_azure_lock = threading.Lock()
_azure_configured = False


def _configure_azure(resource: Resource, reader: MetricReader, connection_string: str) -> None:
    """Set up the Azure Monitor distro once per process (it installs the global providers).

    A second `Telemetry` in the same process (tests) shares the first one's providers: its
    instruments go to Azure, and ``/metrics`` is the first one's.
    """
    global _azure_configured  # noqa: PLW0603 - the distro itself is process-global
    try:
        from azure.monitor.opentelemetry import configure_azure_monitor  # noqa: PLC0415 - heavy, used on demand
    except ImportError as exc:
        raise ConfigError(
            f"{AZURE_ENV} is set but the Azure Monitor distro is not installed: "
            "pip install azure-monitor-opentelemetry (or unset the variable)"
        ) from exc
    with _azure_lock:
        if _azure_configured:
            return
        configure_azure_monitor(
            connection_string=connection_string,
            resource=resource,
            metric_readers=[reader],
            # structlog writes to stderr itself: only standard-library records under this name
            # would be exported, and the service's lines reach Azure through the platform.
            logger_name="amora_authz",
            # Live metrics open a second channel to Azure; not needed for alerts.
            enable_live_metrics=False,
        )
        _azure_configured = True


class Telemetry:
    """The service's meter (always), tracer (when an exporter takes traces) and ``/metrics``.

    Args:
        exporter: ``azure``, ``otlp`` or ``prometheus``; by default from the environment
            (:func:`exporter_from_env`).
        metric_readers: extra readers (tests pass an in-memory one).
        tracer_provider: use this tracer provider (tests: an in-memory exporter) instead
            of the one the exporter implies.
        environ: the environment to read (default ``os.environ``).

    Raises:
        ConfigError: the chosen exporter's package is not installed.
    """

    def __init__(
        self,
        *,
        exporter: str | None = None,
        metric_readers: Sequence[MetricReader] = (),
        tracer_provider: trace.TracerProvider | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Build the providers and instruments (the Azure distro is configured here)."""
        env = os.environ if environ is None else environ
        self.exporter = exporter or exporter_from_env(env)
        self.registry = CollectorRegistry(auto_describe=True)
        prometheus = PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=self.registry)
        # OTEL_SERVICE_NAME, when set, names the service (Resource.create lets ours win otherwise).
        resource = Resource.create({} if env.get("OTEL_SERVICE_NAME") else {"service.name": "amora-authz"})
        self._owned: list[MeterProvider | TracerProvider] = []
        readers: list[MetricReader] = [prometheus, *metric_readers]
        provider: metrics.MeterProvider
        if self.exporter == "azure":
            _configure_azure(resource, prometheus, env[AZURE_ENV])
            provider = metrics.get_meter_provider()
            if metric_readers:
                provider = self._own(MeterProvider(metric_readers=list(metric_readers), resource=resource))
            tracer_provider = tracer_provider or trace.get_tracer_provider()
        elif self.exporter == "otlp":
            provider, otlp_tracer = _otlp(readers, resource)
            self._owned += [provider, otlp_tracer]
            tracer_provider = tracer_provider or otlp_tracer
        else:
            provider = self._own(MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False))
        self.meter = provider.get_meter(_SCOPE)
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer(_SCOPE)
        self.metrics = Metrics(self.meter)
        self.http_duration = self.meter.create_histogram(
            "amora_authz_http_request_duration",
            unit="s",
            description="Time from an HTTP request to its response's start, by method, route and status.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )

    def _own(self, provider: MeterProvider) -> MeterProvider:
        self._owned.append(provider)
        return provider

    def render(self) -> bytes:
        """The Prometheus text exposition of every instrument."""
        return generate_latest(self.registry)

    def watch_fleet(self, status: Callable[[], Iterable[BrokerStatus]]) -> None:
        """Export the brokers' reconcile state (read at each collection)."""

        def gauge(attribute: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def observe(_options: CallbackOptions) -> Iterable[Observation]:
                return [
                    metrics.Observation(float(getattr(s, attribute)), {"broker": s.name})
                    for s in status()
                    if getattr(s, attribute) is not None
                ]

            return observe

        for name, attribute, unit, description in _BROKER_GAUGES:
            self.meter.create_observable_gauge(name, [gauge(attribute)], unit=unit, description=description)
        self.meter.create_observable_counter(
            "amora_authz_broker_commands",
            [gauge("commands_applied")],
            unit="{command}",
            description="Dynamic-security commands the broker applied since the service started.",
        )
        # Token mode: session revocations sent to each broker's amora_auth plugin.
        self.meter.create_observable_counter(
            "amora_authz_broker_revocations_sent",
            [gauge("revocations_sent")],
            unit="{session}",
            description="Session revocations the broker acknowledged since the service started (token mode).",
        )
        self.meter.create_observable_counter(
            "amora_authz_broker_revocations_failed",
            [gauge("revocations_failed")],
            unit="{session}",
            description="Session revocations that did not reach the broker (retried until it holds them; token mode).",
        )

    def shutdown(self) -> None:
        """Flush and stop what this object owns (the Azure distro's providers are global)."""
        for provider in self._owned:
            provider.shutdown()
        self._owned.clear()


def _otlp(readers: list[MetricReader], resource: Resource) -> tuple[MeterProvider, TracerProvider]:
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError(
            f"{OTLP_ENV} is set but the OTLP exporter is not installed: "
            "pip install opentelemetry-exporter-otlp-proto-http (or unset the variable)"
        ) from exc
    meter_provider = MeterProvider(
        metric_readers=[*readers, PeriodicExportingMetricReader(OTLPMetricExporter())],
        resource=resource,
        shutdown_on_exit=False,
    )
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return meter_provider, tracer_provider


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


class Metrics:
    """The service's counters by name (``inc("amora_authz_sessions_created_total")``).

    Names are the Prometheus ones; each is an OpenTelemetry counter with the unit and HELP
    text of ``_COUNTERS`` (an unknown name still works, with a generic description).
    """

    def __init__(self, meter: metrics.Meter) -> None:
        """Counters are made on first use."""
        self._meter = meter
        self._counters: dict[str, Counter] = {}

    def counter(self, name: str) -> Counter:
        """The counter ``name`` (Prometheus name, with or without ``_total``)."""
        base = name.removesuffix("_total")
        counter = self._counters.get(base)
        if counter is None:
            unit, description = _COUNTERS.get(base, ("1", base.replace("_", " ")))
            counter = self._counters[base] = self._meter.create_counter(base, unit=unit, description=description)
        return counter

    def inc(self, name: str, amount: int = 1, **labels: Any) -> None:  # noqa: ANN401 - attribute values
        """Add ``amount`` to the counter ``name`` with ``labels`` as attributes."""
        self.counter(name).add(amount, labels)
