"""SDK failover and failback: how long an app takes to leave a dead or hung broker and to come back.

A primary and a standby mosquitto (TLS, dynamic security, bridged) as the harness starts
them; one `amora_sync.AmoraClient` connected to the primary. Each round:

* **hung**: SIGSTOP the primary (sockets stay open, nothing answers). Measured: until the
  client reports the link lost (``detect``) and until it is connected to the standby
  (``failover``). Then SIGCONT, and until it is connected to the primary again (``failback``,
  which includes the jittered `failback_interval` wait).
* **dead**: SIGKILL the primary; ``detect`` and ``failover`` as above; then restart it and
  measure ``failback``.

Targets (issue 18): a hung broker left within 5 s, failover within 10 s — read from the
figures, never asserted. The session exchange is served in-process (httpx MockTransport).

Run: ``python -m amora_bench.sdk_failover [--rounds 3] [--failback-interval 2] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_bench._common import latency_summary

if TYPE_CHECKING:
    from amora_devtools.broker import BrokerProcess
    from amora_sync import AmoraClient


async def _until(client: AmoraClient, *, connected_port: int | None) -> float:
    """Wait until lost (`connected_port` None) or connected to that port; return the instant."""
    from amora_sync import ConnectionState  # noqa: PLC0415

    async with asyncio.timeout(120):
        async for info in client.connection_changes():
            if connected_port is None and info.state is not ConnectionState.CONNECTED:
                return time.monotonic()
            port = None if info.endpoint is None else info.endpoint.port
            if connected_port is not None and info.state is ConnectionState.CONNECTED and port == connected_port:
                return time.monotonic()
    raise RuntimeError("the client closed")


async def _round(
    client: AmoraClient, primary: BrokerProcess, standby: BrokerProcess, *, hung: bool
) -> dict[str, float]:
    start = time.monotonic()
    if hung:
        os.kill(primary.pid, signal.SIGSTOP)
    else:
        primary.kill()
    try:
        lost = await _until(client, connected_port=None)
        moved = await _until(client, connected_port=standby.app_port)
    finally:
        if hung:
            os.kill(primary.pid, signal.SIGCONT)
    back_from = time.monotonic()
    if not hung:
        await asyncio.to_thread(primary.restart)
    back = await _until(client, connected_port=primary.app_port)
    return {"detect_s": lost - start, "failover_s": moved - start, "failback_s": back - back_from}


async def _measure(*, rounds: int, failback_interval: float) -> dict[str, Any]:
    import httpx  # noqa: PLC0415

    from amora_devtools import create_session_client  # noqa: PLC0415
    from amora_devtools.broker import start_broker_pair  # noqa: PLC0415
    from amora_devtools.pki import DevPKI  # noqa: PLC0415
    from amora_protocol import EncryptionKey, SigningKey  # noqa: PLC0415
    from amora_sync import AmoraClient, ReconnectPolicy  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="amora-bench-failover-") as tmp:
        pki = DevPKI.create(Path(tmp) / "pki")
        primary, standby = start_broker_pair(Path(tmp) / "brokers", pki)
        try:
            session_id, password = f"bench-{secrets.token_hex(6)}", secrets.token_urlsafe(16)
            for broker in (primary, standby):
                create_session_client(broker, session_id, password, user="bench", device_ids=["bench-1"])
            answer = {
                "session_id": session_id,
                "expires_at": time.time_ns() // 1_000_000 + 3_600_000,
                "broker": {
                    "endpoints": [f"mqtts://{b.host}:{b.app_port}" for b in (primary, standby)],
                    "username": session_id,
                    "password": password,
                    "client_id": session_id,
                },
                "grant": base64.b64encode(b"bench").decode(),
                "devices": [
                    {
                        "device_id": "bench-1",
                        "signing_key": base64.b64encode(SigningKey.generate().public_key.raw).decode(),
                        "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
                    }
                ],
                "authz_keys": [],
            }

            def exchange(request: httpx.Request) -> httpx.Response:
                if request.method == "POST":
                    return httpx.Response(201 if request.url.path == "/v1/sessions" else 200, json=answer)
                return httpx.Response(204)

            policy = ReconnectPolicy(failback_interval=failback_interval)
            results: dict[str, list[dict[str, float]]] = {"hung": [], "dead": []}
            async with (
                httpx.AsyncClient(transport=httpx.MockTransport(exchange)) as http,
                AmoraClient(
                    "http://authz.invalid",
                    lambda: "bench-token",
                    ssl_context=primary.client_context(),
                    http_client=http,
                    reconnect=policy,
                ) as client,
            ):
                for _ in range(rounds):
                    for kind in ("hung", "dead"):
                        results[kind].append(await _round(client, primary, standby, hung=kind == "hung"))
        finally:
            standby.close()
            primary.close()
    figures: dict[str, Any] = {
        "rounds": rounds,
        "policy": {
            "liveness_interval_s": policy.liveness_interval,
            "liveness_timeout_s": policy.liveness_timeout,
            "failback_interval_s": failback_interval,
        },
    }
    for kind, runs in results.items():
        figures[kind] = {
            key: latency_summary([r[key] * 1000 for r in runs]) for key in ("detect_s", "failover_s", "failback_s")
        }
    hung_failover = figures["hung"]["failover_s"]["max_ms"]
    figures["target_hung_left_within_5s"] = figures["hung"]["detect_s"]["max_ms"] <= 5000
    figures["target_failover_within_10s"] = hung_failover <= 10_000
    return figures


def measure(*, rounds: int = 3, failback_interval: float = 2.0) -> dict[str, Any]:
    """Run the scenario and return its figures."""
    return asyncio.run(_measure(rounds=rounds, failback_interval=failback_interval))


def main(argv: list[str] | None = None) -> int:
    """Command line: print the figures (and write them as JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="hung and dead rounds each (default 3)")
    parser.add_argument(
        "--failback-interval", type=float, default=2.0, help="the client's failback_interval in s (default 2)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = measure(rounds=args.rounds, failback_interval=args.failback_interval)
    text = json.dumps(figures, indent=2)
    sys.stdout.write(text + "\n")
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
