"""The agent process's telemetry set-up: the loopback Prometheus endpoint, Azure Monitor, logs.

Each scenario runs in a fresh interpreter: the process's global meter and tracer providers
can be set once, as `amora-agent run` does. Nothing leaves this machine: the Azure Monitor
connection string points its ingestion at a closed loopback port.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from amora_agent import AgentTelemetry, TelemetryConfig

if TYPE_CHECKING:
    from pathlib import Path

FAKE_CONNECTION_STRING = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


PROMETHEUS = """
    import json, sys, structlog, httpx
    from amora_agent import AgentTelemetry, TelemetryConfig
    from amora_agent._telemetry import configure_process
    process = configure_process(
        TelemetryConfig(prometheus_port=0), device_id="player-1", version="0", logger=structlog.get_logger(), environ={}
    )
    telemetry = AgentTelemetry()
    telemetry.answered("rejected", "clock-skew")
    telemetry.answered("succeeded", None)
    telemetry.command_duration.record(0.004, {"outcome": "succeeded"})
    telemetry.mqtt_disconnected.add(2.5)
    host, port = process.prometheus_address
    text = httpx.get(f"http://{host}:{port}/metrics", timeout=5).text
    process.shutdown()
    print(json.dumps({"host": host, "text": text}))
"""


def test_the_process_serves_its_metrics_on_loopback_in_the_prometheus_format() -> None:
    done = _run(PROMETHEUS)
    assert done.returncode == 0, done.stderr
    served = json.loads(done.stdout.splitlines()[-1])
    assert served["host"] == "127.0.0.1"
    families = {f.name: f for f in text_string_to_metric_families(served["text"])}
    commands = families["amora_agent_commands"]
    assert commands.type == "counter"
    assert commands.documentation.startswith("Commands answered")
    assert {
        (s.labels["outcome"], s.labels["reason"], s.value) for s in commands.samples if s.name.endswith("_total")
    } == {
        ("rejected", "clock-skew", 1.0),
        ("succeeded", "", 1.0),
    }
    duration = families["amora_agent_command_duration_seconds"]
    assert duration.type == "histogram"
    assert [s.value for s in duration.samples if s.name.endswith("_count")] == [1.0]
    disconnected = families["amora_agent_mqtt_disconnected_seconds"]
    assert disconnected.type == "counter"
    assert [s.value for s in disconnected.samples if s.name.endswith("_total")] == [2.5]


def test_a_port_in_use_is_logged_and_the_agent_goes_on() -> None:
    script = """
        import socket, structlog
        from amora_agent import TelemetryConfig
        from amora_agent._telemetry import configure_process
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = configure_process(
            TelemetryConfig(prometheus_port=port), device_id="p", version="0", logger=structlog.get_logger(), environ={}
        )
        print(process.prometheus_address)
    """
    done = _run(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "None"
    assert "metrics endpoint not served" in done.stdout + done.stderr


AZURE = """
    import json, pathlib, sys, tempfile, structlog
    from opentelemetry import metrics, trace
    from amora_agent import AgentTelemetry, TelemetryConfig
    from amora_agent._telemetry import configure_process
    process = configure_process(
        TelemetryConfig(prometheus=False),
        device_id="player-1",
        version="0",
        logger=structlog.get_logger(),
        environ={"APPLICATIONINSIGHTS_CONNECTION_STRING": sys.argv[1]},
    )
    telemetry = AgentTelemetry()
    with telemetry.tracer.start_as_current_span("amora.command process"):
        telemetry.answered("succeeded", None)
    flushed = [trace.get_tracer_provider().force_flush(10_000), metrics.get_meter_provider().force_flush(10_000)]
    stored = [p.name for p in pathlib.Path(tempfile.gettempdir()).rglob("*.blob*")]
    result = {"exporter": process.exporter, "tracing": telemetry.tracing, "flushed": flushed, "stored": stored}
    print(json.dumps(result))
"""


def test_azure_monitor_is_configured_and_exports_with_a_fake_connection_string(tmp_path: Path) -> None:
    # The distro's ingestion endpoint is a closed loopback port, its SDK statistics (statsbeat)
    # are off: the export is attempted, refused locally, and kept in its offline storage.
    env = {
        "PATH": "/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    }
    done = _run(AZURE, FAKE_CONNECTION_STRING, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["exporter"] == "azure"
    assert result["tracing"] is True
    assert result["stored"], "the Azure exporter kept nothing: it did not run"
    assert "127.0.0.1" in done.stderr + done.stdout  # its one attempt went to the loopback port


LOGS = """
    import structlog
    from opentelemetry.sdk.trace import TracerProvider
    from amora_agent import AgentTelemetry
    from amora_agent._logging import configure_logging
    configure_logging("info")
    telemetry = AgentTelemetry(tracer_provider=TracerProvider())
    log = structlog.get_logger("amora_agent")
    with telemetry.tracer.start_as_current_span("amora.command process") as span:
        context = span.get_span_context()
        log.info("command answered", status="succeeded")
        print(f"{context.trace_id:032x} {context.span_id:016x}")
    log.info("outside")
"""


def test_log_lines_written_in_a_span_carry_its_trace_and_span_ids() -> None:
    done = _run(LOGS)
    assert done.returncode == 0, done.stderr
    trace_id, span_id = done.stdout.split()
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    inside = next(line for line in lines if line["event"] == "command answered")
    assert (inside["trace_id"], inside["span_id"]) == (trace_id, span_id)
    outside = next(line for line in lines if line["event"] == "outside")
    assert "trace_id" not in outside


def test_without_a_tracer_provider_nothing_is_traced() -> None:
    telemetry = AgentTelemetry()
    assert telemetry.tracing is False
    assert TelemetryConfig().prometheus_host == "127.0.0.1"
    assert AgentTelemetry.extract([("traceparent", "not a trace context")]) is None
