"""The service's telemetry: the exposition the library writes, the exporter choice, Azure Monitor.

The Azure Monitor distro installs process-global providers, so it is configured in a fresh
interpreter, with a connection string whose ingestion endpoint is a closed loopback port:
nothing leaves this machine.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import textwrap
import threading
from typing import TYPE_CHECKING, ClassVar

from prometheus_client.parser import text_string_to_metric_families

from amora_authz._telemetry import Telemetry, exporter_from_env

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

FAKE_CONNECTION_STRING = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"


def test_counters_are_typed_described_and_their_labels_escaped() -> None:
    telemetry = Telemetry(environ={})
    try:
        awkward = 'a "quoted"\\ value\nover two lines'
        telemetry.metrics.inc("amora_authz_token_rejected_total", code=awkward)
        telemetry.metrics.inc("amora_authz_sessions_refused_total", operation="create", reason="rate_limited")
        families = {f.name: f for f in text_string_to_metric_families(telemetry.render().decode())}
    finally:
        telemetry.shutdown()
    rejected = families["amora_authz_token_rejected"]
    assert rejected.type == "counter"
    assert rejected.documentation == "User tokens rejected, by reason code."
    assert [(s.labels["code"], s.value) for s in rejected.samples if s.name.endswith("_total")] == [(awkward, 1.0)]
    refused = families["amora_authz_sessions_refused"]
    assert [s.labels for s in refused.samples if s.name.endswith("_total")] == [
        {"operation": "create", "reason": "rate_limited"}
    ]


def test_the_exporter_follows_the_environment() -> None:
    assert exporter_from_env({}) == "prometheus"
    assert exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) == "otlp"
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "APPLICATIONINSIGHTS_CONNECTION_STRING": "x"}
    assert exporter_from_env(both) == "azure"
    assert exporter_from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": "  "}) == "prometheus"


class _Collector(http.server.BaseHTTPRequestHandler):
    """A loopback OTLP/HTTP receiver: records the paths posted to, answers 200."""

    received: ClassVar[list[tuple[str, str, int]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], len(body)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_otlp_sends_traces_and_metrics_to_the_endpoint_named(monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        telemetry = Telemetry()
        assert telemetry.exporter == "otlp"
        with telemetry.tracer.start_as_current_span("POST /v1/sessions") as span:
            assert span.is_recording()
        telemetry.metrics.inc("amora_authz_sessions_created_total")
        assert b"amora_authz_sessions_created_total 1.0" in telemetry.render()  # /metrics still served
        telemetry.shutdown()  # flushes both exporters
    finally:
        server.shutdown()
        server.server_close()
    paths = {(path, kind) for path, kind, size in _Collector.received if size > 0}
    assert paths >= {("/v1/traces", "application/x-protobuf"), ("/v1/metrics", "application/x-protobuf")}


AZURE = """
    import json, pathlib, sys, tempfile
    from opentelemetry import metrics, trace
    from amora_authz._telemetry import Telemetry
    telemetry = Telemetry(environ={"APPLICATIONINSIGHTS_CONNECTION_STRING": sys.argv[1]})
    telemetry.metrics.inc("amora_authz_sessions_created_total")
    with telemetry.tracer.start_as_current_span("POST /v1/sessions"):
        pass
    # The distro samples at a rate (5 traces/s by default): assert the pipeline, not one span.
    recording = type(trace.get_tracer_provider()).__module__.startswith("opentelemetry.sdk")
    flushed = [trace.get_tracer_provider().force_flush(10_000), metrics.get_meter_provider().force_flush(10_000)]
    stored = [p.name for p in pathlib.Path(tempfile.gettempdir()).rglob("*.blob*")]
    text = telemetry.render().decode()
    result = {"exporter": telemetry.exporter, "recording": recording, "stored": stored, "flushed": flushed}
    print(json.dumps(result | {"served": "amora_authz_sessions_created_total 1.0" in text}))
"""


def test_azure_monitor_is_configured_and_exports_with_a_fake_connection_string(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true"}
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", textwrap.dedent(AZURE), FAKE_CONNECTION_STRING],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["exporter"] == "azure"
    assert result["recording"] is True
    assert result["served"] is True  # /metrics keeps working beside the distro
    assert result["stored"], "the Azure exporter kept nothing: it did not run"
    assert "127.0.0.1" in done.stderr  # its one attempt went to the loopback port
