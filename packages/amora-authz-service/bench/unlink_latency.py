# ruff: noqa: INP001, T201 - a stand-alone script that prints its results
"""Measure unlink -> subscription-cut latency against a real mosquitto (loopback only).

For each round: link alice to a device, connect her session and subscribe to the
device's state, then time from the moment ``DELETE /v1/admin/users/alice/devices/{id}``
is sent until the broker closes her connection (after which she can no longer
subscribe). Prints p50/p90/p99/max in milliseconds, and the same for the HTTP answer.

Usage: python packages/amora-authz-service/bench/unlink_latency.py [--rounds N] [--sessions M]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import tempfile
import time
from pathlib import Path

import structlog

from amora_authz import RateLimitSettings
from amora_authz.testing import broker_endpoint, dev_settings, serve, session_body
from amora_devtools import DevPKI, MqttClient, client_ssl_context, start_broker
from amora_protocol import EncryptionKey, SigningKey, state_topic

DEVICE = "bench-player"
WAIT = 5.0


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def summary(name: str, values: list[float]) -> str:
    """One line of percentiles in ms."""
    return (
        f"{name}: n={len(values)} p50={statistics.median(values):.2f} ms "
        f"p90={percentile(values, 0.9):.2f} ms p99={percentile(values, 0.99):.2f} ms "
        f"max={max(values):.2f} ms"
    )


async def run(rounds: int, sessions: int) -> None:
    """Run the measurement."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory(prefix="authz-bench-") as tmp:
        folder = Path(tmp)
        pki = DevPKI.create(folder / "pki")
        with start_broker(folder / "broker", pki) as broker:
            settings = dev_settings(
                folder,
                max_sessions_per_user=sessions + 1,
                rate_limits=RateLimitSettings(enabled=False),  # thousands of set-up sessions
                brokers=(broker_endpoint(broker),),
            )
            async with serve(settings) as svc:
                admin = await svc.auth("admin")
                alice = await svc.auth("alice")
                await svc.http.post(
                    "/v1/admin/devices",
                    headers=admin,
                    json={
                        "device_id": DEVICE,
                        "signing_key": base64.b64encode(SigningKey.generate().public_key.raw).decode(),
                        "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
                    },
                )
                session = (await svc.http.post("/v1/sessions", json=session_body(), headers=alice)).json()
                credential = session["broker"]
                # Other users' sessions make the broker's dynsec file (rewritten whole on
                # every change) as large as a busy deployment's.
                bob = await svc.auth("bob")
                created: list[float] = []
                for _ in range(sessions):
                    started = time.perf_counter()
                    response = await svc.http.post("/v1/sessions", json=session_body(), headers=bob)
                    created.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 201  # noqa: S101
                if created:
                    print(summary("session creation while filling the broker", created))
                cut: list[float] = []
                answered: list[float] = []
                for _ in range(rounds):
                    await svc.http.put(f"/v1/admin/users/alice/devices/{DEVICE}", headers=admin)
                    client = await asyncio.to_thread(
                        MqttClient.connect,
                        broker.host,
                        broker.app_port,
                        ssl_context=client_ssl_context(broker.ca_file),
                        client_id=credential["client_id"],
                        username=credential["username"],
                        password=credential["password"],
                        timeout=WAIT,
                    )
                    try:
                        code = await asyncio.to_thread(client.subscribe, state_topic(DEVICE), qos=1, timeout=WAIT)
                        assert code < 0x80, code  # noqa: S101 - a broken set-up must stop the run

                        def watch(c: MqttClient = client) -> float:
                            closed = c.closed_by_broker(timeout=WAIT)
                            return time.perf_counter() if closed else float("nan")

                        watcher = asyncio.create_task(asyncio.to_thread(watch))
                        started = time.perf_counter()
                        response = await svc.http.delete(f"/v1/admin/users/alice/devices/{DEVICE}", headers=admin)
                        answered.append((time.perf_counter() - started) * 1000)
                        assert response.status_code == 204  # noqa: S101
                        cut.append((await watcher - started) * 1000)
                    finally:
                        client.disconnect()
                print(f"broker holds {sessions + 1} session clients")
                print(summary("unlink -> connection cut", cut))
                print(summary("unlink HTTP answer", answered))


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=0, help="other sessions to create first")
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.sessions))


if __name__ == "__main__":
    main()
