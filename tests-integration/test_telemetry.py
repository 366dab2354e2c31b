"""Telemetry on the real stack: one trace across a command, the agent's instruments, ``/metrics``.

The stack runs mosquitto (TLS, dynamic security), MPD and the authz service as processes; the
agent of the MPD player is run in this process instead of its own, so that the SDK's and the
agent's spans land in one in-memory exporter. Nothing is exported anywhere else.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from amora_agent import AgentTelemetry, agent_from_config, load_config
from amora_devtools.stack import Stack
from amora_protocol import CommandStatus
from amora_sync import AmoraClient, Play, ReconnectPolicy

WAIT_S = 15.0
DEVICE = "player-1"
SPANS = (
    "amora.command send",
    "amora.command process",
    "mpd execute",
    "amora.command respond",
    "amora.command response",
    "amora.state publish",
)


class _Arrivals(SpanProcessor):
    """Wakes the test when a span with a given name ends (no polling)."""

    def __init__(self) -> None:
        self.ended: set[str] = set()
        self.changed = threading.Condition()

    def on_end(self, span: ReadableSpan) -> None:
        with self.changed:
            self.ended.add(span.name)
            self.changed.notify_all()

    def wait_for(self, names: tuple[str, ...]) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: set(names) <= self.ended, timeout=WAIT_S)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path / "stack", players=1, standby=False, supervise=False, users={"alice": (0,)}) as running:
        yield running


def _token(stack: Stack) -> Any:
    async def token() -> str:
        async with httpx.AsyncClient(base_url=stack.authz_url, timeout=10) as http:
            response = await http.post("/dev-issuer/token", json={"username": "alice"})
            response.raise_for_status()
            return str(response.json()["access_token"])

    return token


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_one_command_is_one_trace_from_the_app_through_the_agent_and_back(stack: Stack) -> None:
    spans = InMemorySpanExporter()
    arrivals = _Arrivals()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer_provider.add_span_processor(arrivals)
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    player = stack.player(DEVICE)
    assert player.process is not None
    player.process.stop()  # its agent runs here instead, with the in-memory providers
    pki = stack.pki
    assert pki is not None

    async def scenario() -> None:
        agent = agent_from_config(
            load_config(player.config_file),
            logger=structlog.get_logger("test"),
            telemetry=AgentTelemetry(meter_provider=meter_provider, tracer_provider=tracer_provider),
        )
        async with agent:
            await asyncio.wait_for(agent.wait_online(), WAIT_S)
            policy = ReconnectPolicy(initial_delay=0.05, max_delay=1.0, connect_timeout=3.0)
            async with AmoraClient(
                stack.authz_url,
                _token(stack),
                ca_file=pki.ca_file,
                reconnect=policy,
                tracer_provider=tracer_provider,
            ) as client:
                response = await client.command(DEVICE, Play(), timeout=WAIT_S)
                assert response.status is CommandStatus.SUCCEEDED
                assert await asyncio.to_thread(arrivals.wait_for, SPANS), f"spans ended: {arrivals.ended}"

    asyncio.run(scenario())
    by_name = {span.name: span for span in spans.get_finished_spans() if span.name in SPANS}
    send = by_name["amora.command send"]
    trace_id = send.context.trace_id
    assert {name: span.context.trace_id for name, span in by_name.items()} == dict.fromkeys(SPANS, trace_id)

    def parent(name: str) -> int | None:
        link = by_name[name].parent
        return None if link is None else link.span_id

    # app -> (broker) -> agent -> MPD; the answer and the state it caused; the app's receipt.
    assert parent("amora.command process") == send.context.span_id
    assert parent("mpd execute") == by_name["amora.command process"].context.span_id
    assert parent("amora.command respond") == by_name["amora.command process"].context.span_id
    assert parent("amora.command response") == by_name["amora.command respond"].context.span_id
    assert parent("amora.state publish") == by_name["mpd execute"].context.span_id
    command_id = send.attributes["amora.command.id"] if send.attributes else None
    assert by_name["amora.command process"].attributes is not None
    assert by_name["amora.command process"].attributes["amora.command.id"] == command_id

    # The agent's instruments saw the same command.
    answered = {
        (p.attributes["outcome"], p.attributes["reason"]): p.value for p in _points(reader, "amora_agent_commands")
    }
    assert answered == {("succeeded", ""): 1}
    durations = _points(reader, "amora_agent_command_duration")
    assert [(p.attributes["outcome"], p.count) for p in durations] == [("succeeded", 1)]
    assert 0 < durations[0].sum < WAIT_S
    assert sum(p.value for p in _points(reader, "amora_agent_states_published")) >= 2  # start + the play
    assert [p.value for p in _points(reader, "amora_agent_mqtt_connected")] == [0]  # stopped: online, then off


def test_metrics_are_the_exporters_text_with_help_units_and_types(stack: Stack) -> None:
    async def log_in() -> None:
        assert stack.pki is not None
        async with AmoraClient(stack.authz_url, _token(stack), ca_file=stack.pki.ca_file):
            pass

    asyncio.run(log_in())
    response = httpx.get(f"{stack.authz_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    created = families["amora_authz_sessions_created"]
    assert created.type == "counter"
    assert created.documentation.startswith("Sessions created")
    assert [s.value for s in created.samples if s.name == "amora_authz_sessions_created_total"] == [1.0]
    duration = families["amora_authz_http_request_duration_seconds"]
    assert duration.type == "histogram"
    routes = {s.labels["route"] for s in duration.samples if s.name.endswith("_count")}
    assert "/v1/sessions" in routes
    requests = families["amora_authz_http_requests"]
    assert {
        (s.labels["method"], s.labels["route"], s.labels["status"])
        for s in requests.samples
        if s.name == "amora_authz_http_requests_total"
    } >= {("POST", "/v1/sessions", "201")}
    reachable = families["amora_authz_broker_reachable"]
    assert reachable.type == "gauge"
    assert [(s.labels["broker"], s.value) for s in reachable.samples] == [("primary", 1.0)]
    passes = families["amora_authz_broker_reconcile_passes"]
    assert any(s.labels["ok"] == "true" and s.value >= 1 for s in passes.samples)


def test_each_agent_process_serves_its_metrics_on_loopback(stack: Stack) -> None:
    # The stack gives each agent a free port (OTEL_EXPORTER_PROMETHEUS_PORT=0); the agent names
    # it in its `telemetry configured` log line.
    player = stack.player(DEVICE)
    lines = [json.loads(line) for line in player.log_file.read_text().splitlines() if line.startswith("{")]
    endpoint = next(line["metrics_endpoint"] for line in lines if line.get("event") == "telemetry configured")
    assert endpoint.startswith("http://127.0.0.1:")
    # The stack is up once the agent's online status is out; its first state follows it.
    deadline = time.monotonic() + WAIT_S
    families = _scrape(endpoint)
    while "amora_agent_states_published" not in families and time.monotonic() < deadline:
        time.sleep(0.2)
        families = _scrape(endpoint)
    published = families["amora_agent_states_published"]
    assert published.type == "counter"
    assert [s.value >= 1 for s in published.samples if s.name == "amora_agent_states_published_total"] == [True]
    assert [s.value for s in families["amora_agent_mqtt_connected"].samples] == [1.0]


def _scrape(url: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(httpx.get(url, timeout=10).text)}


def test_broker_statistics_come_from_mosquittos_sys_topics(stack: Stack) -> None:
    # mosquitto publishes $SYS every sys_interval (10 s), retained (a value at its start, the
    # next ones when they changed): the count of the stack's clients is there within two.
    url = f"{stack.authz_url}/metrics"
    deadline = time.monotonic() + 2 * WAIT_S

    def connected_clients(families: dict[str, Any]) -> float:
        family = families.get("amora_broker_clients_connected")
        return 0.0 if family is None else sum(s.value for s in family.samples if s.labels["broker"] == "primary")

    families = _scrape(url)
    # At least the agent, the service's dynsec client, its session-list publisher and the exporter.
    while connected_clients(families) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
        families = _scrape(url)
    assert connected_clients(families) >= 3
    assert families["amora_broker_clients_connected"].type == "gauge"
    received = families["amora_broker_messages_received"]
    assert received.type == "counter"
    assert [s.value > 0 for s in received.samples if s.name == "amora_broker_messages_received_total"] == [True]
    assert families["amora_broker_messages_dropped"].type == "counter"
    uptime = families["amora_broker_uptime_seconds"]
    assert [s.labels["broker"] for s in uptime.samples] == ["primary"]
