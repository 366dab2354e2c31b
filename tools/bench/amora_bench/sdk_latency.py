"""SDK end-to-end latency: device publish -> verified `DeviceState` out of the SDK's watch iterator.

Side by side, in the same run and on the same broker (the Amora mosquitto: TLS, dynamic
security), with two bare subscribers that do no verification at all:

* ``gmqtt``: a bare gmqtt client (the SDK's own transport), time taken in ``on_message``;
* ``paho``: a bare paho-mqtt client (network loop in its own thread), time taken in ``on_message``;
* ``sdk``: `amora_sync.AmoraClient` — verify the Ed25519 envelope, order by version, fan out
  to a watcher's bounded queue — time taken when ``async for`` hands the state to the app;
* ``paho-wss`` and ``sdk-wss``: the same two over the broker's ``wss://`` listener (MQTT over
  TLS websockets; the SDK with ``transport="wss"``, paho-mqtt underneath), so the cost of
  the transport reads off against the TCP rows of the same run.

A device in a separate process (mTLS on the device listener) publishes signed, retained QoS 1
states at a fixed rate; each subscriber runs alone in its phase. Send and receive instants are
both CLOCK_MONOTONIC (system-wide on Linux), so they compare across processes. Targets (issue
6): SDK p50 within 2x of the bare client, p99 under 10 ms at 1,000 msg/s — read from the
figures, never asserted.

Run: ``python -m amora_bench.sdk_latency [--rate 1000] [--seconds 5] [--json FILE]``.
The session exchange is served in-process (httpx MockTransport): it is not what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_bench._common import broker_for_bench, latency_summary
from amora_bench._rig import device_identity, mock_session_client, session_identity, start_publisher

if TYPE_CHECKING:
    from amora_devtools.broker import BrokerProcess

WARMUP = 50  # first messages of each phase left out of the figures (connections settling)
DRAIN_S = 3.0  # how long a phase waits for its last messages after the publisher ends


async def _run_phase(kind: str, broker: BrokerProcess, *, rate: float, count: int) -> dict[str, Any]:
    device_id = f"bench-{kind}"
    cert, signing_raw, encryption_raw = device_identity(broker, device_id)
    session_id, password = session_identity(broker, device_id)
    received: dict[int, int] = {}
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def arrived(version: int) -> None:
        received[version] = time.monotonic_ns()
        if version >= count:
            loop.call_soon_threadsafe(done.set)

    subscriber = _subscriber(
        kind=kind,
        broker=broker,
        device_id=device_id,
        session_id=session_id,
        password=password,
        signing_raw=signing_raw,
        encryption_raw=encryption_raw,
        arrived=arrived,
    )
    async with subscriber:
        proc, parent = start_publisher(
            broker, cert=cert, device_id=device_id, signing_raw=signing_raw, rate=rate, count=count
        )
        cpu_start = 0.0
        try:
            if await asyncio.to_thread(parent.poll, 30) and await asyncio.to_thread(parent.recv) == "ready":
                cpu_start = time.process_time()
                parent.send("go")
            if not await asyncio.to_thread(parent.poll, count / rate + 30):
                raise RuntimeError(f"{kind}: the device process sent no results")
            sent: list[int] = await asyncio.to_thread(parent.recv)
            try:
                async with asyncio.timeout(DRAIN_S):
                    await done.wait()
            except TimeoutError:
                pass  # measured as lost below
            # This process's CPU time per message received (the subscriber is all it runs):
            # the receive path's cost, which the machine's load does not inflate as it does
            # the latencies.
            cpu_us = (time.process_time() - cpu_start) / count * 1e6
        finally:
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()
    latencies = [(received[v] - sent[v - 1]) / 1e6 for v in range(WARMUP + 1, count + 1) if v in received]
    figures: dict[str, Any] = latency_summary(latencies)
    figures["expected"] = count - WARMUP
    figures["missing"] = figures["expected"] - len(latencies)
    figures["cpu_us_per_message"] = round(cpu_us, 1)
    figures.update(subscriber.extra)
    figures["samples_ms"] = [round(x, 3) for x in latencies]
    return figures


class _subscriber:  # noqa: N801 - reads as a context-manager function
    """Start one kind of subscriber for a phase; stop it afterwards."""

    def __init__(  # noqa: PLR0913
        self,
        *,
        kind: str,
        broker: BrokerProcess,
        device_id: str,
        session_id: str,
        password: str,
        signing_raw: bytes,
        encryption_raw: bytes,
        arrived: Any,  # noqa: ANN401 - Callable[[int], None]
    ) -> None:
        self.kind = kind
        self.broker = broker
        self.device_id = device_id
        self.session_id = session_id
        self.password = password
        self.signing_raw = signing_raw
        self.encryption_raw = encryption_raw
        self.arrived = arrived
        self._stop: Any = None
        self.extra: dict[str, Any] = {}

    async def __aenter__(self) -> None:
        if self.kind == "gmqtt":
            await self._gmqtt()
        elif self.kind in {"paho", "paho-wss"}:
            await self._paho(wss=self.kind == "paho-wss")
        else:
            await self._sdk(wss=self.kind == "sdk-wss")

    async def __aexit__(self, *_exc: object) -> None:
        await self._stop()

    async def _gmqtt(self) -> None:
        import gmqtt  # noqa: PLC0415

        from amora_protocol import state_topic  # noqa: PLC0415

        count = 0
        subscribed = asyncio.Event()

        def on_message(*_args: object) -> int:
            nonlocal count
            count += 1  # in order: one publisher, one topic, QoS 1
            self.arrived(count)
            return 0

        from amora_devtools import NO_RECONNECT  # noqa: PLC0415

        client = gmqtt.Client(self.session_id)
        client.set_config({"reconnect_retries": NO_RECONNECT})
        client.set_auth_credentials(self.session_id, self.password)
        client.on_message = on_message
        client.on_subscribe = lambda *_a: subscribed.set()
        await client.connect(self.broker.host, self.broker.app_port, ssl=self.broker.client_context())
        client.subscribe(state_topic(self.device_id), qos=1)
        await asyncio.wait_for(subscribed.wait(), 10)

        async def stop() -> None:
            await client.disconnect()

        self._stop = stop

    async def _paho(self, *, wss: bool) -> None:
        import paho.mqtt.client as paho  # noqa: PLC0415

        from amora_protocol import state_topic  # noqa: PLC0415

        count = 0
        subscribed = threading.Event()

        def on_message(*_args: object) -> None:
            nonlocal count
            count += 1
            self.arrived(count)

        client = paho.Client(client_id=self.session_id, protocol=paho.MQTTv5, transport="websockets" if wss else "tcp")
        client.tls_set_context(self.broker.client_context())
        client.username_pw_set(self.session_id, self.password)
        client.on_message = on_message
        client.on_subscribe = lambda *_a: subscribed.set()
        if wss:
            client.ws_set_options(path="/mqtt")
            client.connect("localhost", self.broker.ws_port)  # the certificate's name
        else:
            client.connect(self.broker.host, self.broker.app_port)
        client.loop_start()
        client.subscribe(state_topic(self.device_id), qos=1)
        if not await asyncio.to_thread(subscribed.wait, 10):
            raise RuntimeError("paho: no SUBACK")

        async def stop() -> None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

        self._stop = stop

    async def _sdk(self, *, wss: bool) -> None:
        from amora_protocol import DeviceState  # noqa: PLC0415

        client, http = mock_session_client(
            self.broker,
            device_id=self.device_id,
            session_id=self.session_id,
            password=self.password,
            signing_raw=self.signing_raw,
            encryption_raw=self.encryption_raw,
            transport="wss" if wss else "mqtts",
        )
        await client.__aenter__()
        watch = client.watch(self.device_id, include_connection=False)
        await watch.__aenter__()

        async def consume() -> None:
            async for event in watch:
                if isinstance(event, DeviceState):
                    self.arrived(event.version)

        task = asyncio.create_task(consume(), name="amora-bench.sdk-consumer")

        async def stop() -> None:
            # Versions skipped because a newer one replaced them in the watch queue
            # (the consumer was momentarily slower): delivery is latest-per-device.
            self.extra["superseded"] = watch.superseded
            self.extra["invalid"] = client.stats.invalid
            await watch.__aexit__(None, None, None)
            await client.__aexit__(None, None, None)
            await task
            await http.aclose()

        self._stop = stop


async def _measure(*, rate: float, seconds: float, kinds: tuple[str, ...]) -> dict[str, Any]:
    count = int(rate * seconds) + WARMUP
    with broker_for_bench() as broker:
        phases = {kind: await _run_phase(kind, broker, rate=rate, count=count) for kind in kinds}
    samples = {kind: phase.pop("samples_ms") for kind, phase in phases.items()}
    result: dict[str, Any] = {"rate_per_s": rate, "seconds": seconds, "clients": phases}
    result["latency_sets"] = {f"device publish -> {kind} subscriber": xs for kind, xs in samples.items()}
    sdk, bare = phases.get("sdk"), phases.get("gmqtt")
    if sdk and bare and bare["p50_ms"] > 0:
        result["sdk_p50_over_gmqtt_p50"] = round(sdk["p50_ms"] / bare["p50_ms"], 2)
        result["target_p50_within_2x"] = result["sdk_p50_over_gmqtt_p50"] <= 2.0
    if sdk:
        result["target_p99_under_10ms"] = sdk["p99_ms"] < 10.0
    sdk_wss = phases.get("sdk-wss")
    if sdk and sdk_wss and sdk["p50_ms"] > 0:
        result["sdk_wss_p50_over_sdk_p50"] = round(sdk_wss["p50_ms"] / sdk["p50_ms"], 2)
    return result


def run(
    *,
    rate: float = 1000.0,
    seconds: float = 5.0,
    kinds: tuple[str, ...] = ("gmqtt", "paho", "sdk", "paho-wss", "sdk-wss"),
) -> dict[str, Any]:
    """Measure and return the figures (the `amora_bench` scenario entry point)."""
    return asyncio.run(_measure(rate=rate, seconds=seconds, kinds=kinds))


def main(argv: list[str] | None = None) -> int:
    """Command line: print the figures (and write them as JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="states per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per client (default 5)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = run(rate=args.rate, seconds=args.seconds)
    text = json.dumps(figures, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
