r"""Garbage on the hot paths: what each state costs the cyclic collector, in the SDK and in the agent.

CPython frees most objects by reference counting. Its cyclic collector runs when GC-tracked
objects allocated minus those freed pass a threshold (700), and each run walks every tracked
object of the generations it collects. So a hot path costs the collector through:

* ``tracked_per_state``: net GC-tracked objects per state (allocated minus freed), measured
  with the collector off: how often it will run;
* ``cyclic_per_state``: objects per state that only the collector can free (reference cycles),
  counted by one collection after that window;
* ``retained_bytes_per_state`` / ``peak_kib``: tracemalloc's view, in a window of its own
  (tracing slows everything down);
* the pauses themselves: every collection in a window with the collector on (Python's
  defaults), and one full collection timed with all ``sessions`` open.

Two paths, each alone in this process, on the real broker (TLS, dynamic security):

* ``sdk``: ``sessions`` `AmoraClient`\ s each watching one device whose signed, retained QoS 1
  states a separate process publishes at ``rate / sessions`` per second (each session verifies
  each state: ``rate`` deliveries per second in all); counted per state handed out by a watch;
* ``agent``: a real `Agent` over a `SimulatedPlayer` (mTLS on the device listener) publishing
  one state per volume change, changes made at ``rate``/s (at most 200/s); counted per state
  published.

Run alone: ``python -m amora_bench.garbage --sessions 100 --seconds 3``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_bench._common import broker_for_bench
from amora_bench._gcstats import GcRecorder, full_collection
from amora_bench._rig import device_identity, mock_session_client, session_identity, start_publisher

if TYPE_CHECKING:
    from collections.abc import Callable

    from amora_devtools.broker import BrokerProcess

__all__ = ["run"]

_WARMUP_S = 1.0
_AGENT_RATE = 200.0


async def _window(delivered: Callable[[], int], seconds: float) -> dict[str, Any]:
    """Count what one window of ``seconds`` leaves to the collector, per state."""
    gc.collect()
    gc.disable()
    try:
        d0, c0 = delivered(), gc.get_count()[0]
        await asyncio.sleep(seconds)  # the publisher runs; this process handles what arrives
        d1, c1 = delivered(), gc.get_count()[0]
    finally:
        gc.enable()
    cyclic = gc.collect()
    states = max(1, d1 - d0)
    return {
        "states": d1 - d0,
        "tracked_per_state": round((c1 - c0) / states, 2),
        "cyclic_per_state": round(cyclic / states, 2),
    }


async def _traced(delivered: Callable[[], int], seconds: float) -> dict[str, Any]:
    tracemalloc.start()
    try:
        await asyncio.sleep(0.2)
        d0, (m0, _) = delivered(), tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await asyncio.sleep(seconds)
        d1, (m1, peak) = delivered(), tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    states = max(1, d1 - d0)
    return {"retained_bytes_per_state": round((m1 - m0) / states, 1), "peak_kib": round((peak - m0) / 1024, 1)}


async def _paused(delivered: Callable[[], int], seconds: float) -> dict[str, Any]:
    recorder = GcRecorder()
    recorder.start()
    d0 = delivered()
    try:
        await asyncio.sleep(seconds)
    finally:
        recorder.stop()
    return {"states": delivered() - d0, "pauses": recorder.summary()}


async def _measure_path(delivered: Callable[[], int], seconds: float) -> dict[str, Any]:
    await asyncio.sleep(_WARMUP_S)
    result = await _window(delivered, seconds)
    result["gc_on"] = await _paused(delivered, seconds)
    result |= await _traced(delivered, seconds / 2)
    return result


async def _sdk_path(broker: BrokerProcess, *, sessions: int, rate: float, seconds: float) -> dict[str, Any]:
    device_id = "bench-garbage"
    cert, signing_raw, encryption_raw = device_identity(broker, device_id)
    from amora_sync import ReconnectPolicy  # noqa: PLC0415

    opened: list[tuple[Any, Any, Any]] = []
    count = [0]

    async def consume(watch: Any) -> None:  # noqa: ANN401 - a Watch
        async for _ in watch:
            count[0] += 1

    # Credentials first (blocking dynsec calls), then every client at once: an open client
    # whose loop is blocked would miss its liveness answers.
    identities = [session_identity(broker, device_id, user="u-garbage") for _ in range(sessions)]

    gate = asyncio.Semaphore(32)  # TLS handshakes at once
    # States arrive seldom per session here: liveness probes (after 1.5 s of silence by
    # default) would be most of the traffic; this measures the state path, so probe rarely.
    quiet_links = ReconnectPolicy(liveness_interval=60.0, liveness_timeout=30.0, connect_timeout=60.0)

    async def open_one(session_id: str, password: str) -> None:
        client, http = mock_session_client(
            broker,
            device_id=device_id,
            session_id=session_id,
            password=password,
            signing_raw=signing_raw,
            encryption_raw=encryption_raw,
            reconnect=quiet_links,
        )
        async with gate:
            await client.__aenter__()
        watch = client.watch(device_id, include_connection=False)
        await watch.__aenter__()
        opened.append((client, http, watch))

    await asyncio.gather(*(open_one(s, p) for s, p in identities))
    tasks = [asyncio.create_task(consume(w), name="amora-bench.garbage-consumer") for _, _, w in opened]
    pause = full_collection()  # every session open: the worst pause this process can see
    publish_rate = rate / sessions  # every session verifies every state: ``rate`` deliveries/s in all
    total = int(publish_rate * (_WARMUP_S + 3 * seconds + 2)) + 1
    proc, parent = start_publisher(
        broker, cert=cert, device_id=device_id, signing_raw=signing_raw, rate=publish_rate, count=total
    )
    try:
        if not (await asyncio.to_thread(parent.poll, 30) and await asyncio.to_thread(parent.recv) == "ready"):
            raise RuntimeError("the publisher process did not start")
        parent.send("go")
        result = await _measure_path(lambda: count[0], seconds)
        await asyncio.to_thread(parent.poll, total / publish_rate + 30)
    finally:
        await asyncio.to_thread(proc.join, 30)
        if proc.is_alive():
            proc.kill()
        for client, http, watch in opened:
            await watch.__aexit__(None, None, None)
            await client.__aexit__(None, None, None)
            await http.aclose()
        await asyncio.gather(*tasks, return_exceptions=True)
    superseded = sum(watch.superseded for _, _, watch in opened)
    return {
        "sessions": sessions,
        "deliveries_per_s": rate,
        "full_collection": pause,
        "superseded": superseded,
        **result,
    }


async def _agent_path(broker: BrokerProcess, *, rate: float, seconds: float) -> dict[str, Any]:
    from amora_agent import Agent, AgentOptions, BrokerEndpoint, SimulatedPlayer, TlsConfig, client_ssl_context  # noqa: PLC0415
    from amora_protocol import SetVolume, SigningKey  # noqa: PLC0415

    device_id = "bench-garbage-agent"
    (cert, key), signing_raw, _ = device_identity(broker, device_id)
    player = SimulatedPlayer()
    with tempfile.TemporaryDirectory(prefix="amora-bench-garbage-") as tmp:
        agent = Agent(
            device_id=device_id,
            signing_key=SigningKey.from_raw(signing_raw),
            trusted_keys=[SigningKey.generate().public_key],
            endpoints=[BrokerEndpoint(host=broker.host, port=broker.device_port)],
            ssl_context=client_ssl_context(TlsConfig(ca_file=str(broker.ca_file), cert_file=cert, key_file=key)),
            state_dir=Path(tmp),
            player=player,
            options=AgentOptions(durable=False),
        )
        task = asyncio.create_task(agent.run(), name="amora-bench.garbage-agent")
        await asyncio.wait_for(agent.wait_online(), 30)
        first = agent.state.version if agent.state else 0

        def published() -> int:
            return (agent.state.version if agent.state else first) - first

        async def drive() -> None:
            k, start = 0, time.perf_counter()
            while True:
                due = int((time.perf_counter() - start) * rate)
                while k < due:
                    k += 1
                    player.apply(SetVolume(volume=k % 100 + 1))
                await asyncio.sleep(0.001)

        driver = asyncio.create_task(drive(), name="amora-bench.garbage-driver")
        try:
            result = await _measure_path(published, seconds)
        finally:
            driver.cancel()
            agent.stop()
            await asyncio.gather(driver, task, return_exceptions=True)
    return {"rate_per_s": rate, **result}


def run(*, sessions: int = 100, rate: float = 1000.0, seconds: float = 3.0) -> dict[str, Any]:
    """Measure both paths on a fresh broker; return the figures."""

    async def both() -> dict[str, Any]:
        with broker_for_bench() as broker:
            sdk = await _sdk_path(broker, sessions=sessions, rate=rate, seconds=seconds)
            # One agent publishes QoS 1 with at most 16 unacknowledged: a few hundred changes a
            # second is already far beyond any player; more only measures refused publishes.
            agent = await _agent_path(broker, rate=min(rate, _AGENT_RATE), seconds=seconds)
        return {"sdk": sdk, "agent": agent}

    figures = asyncio.run(both())
    figures["summary"] = _summary(figures)
    return figures


def _summary(f: dict[str, Any]) -> str:
    sdk, agent = f["sdk"], f["agent"]
    lines = [
        (
            "| path | GC-tracked objects / state | cyclic garbage / state | retained bytes / state | "
            "collections (gen 0/1/2) in the GC-on window | pause p99 / max (ms) |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for name, p in (("SDK (per state delivered)", sdk), ("agent (per state published)", agent)):
        by = p["gc_on"]["pauses"]["by_generation"]
        gens = "/".join(str(by.get(str(g), {}).get("count", 0)) for g in range(3))
        lines.append(
            f"| {name} | {p['tracked_per_state']} | {p['cyclic_per_state']} | {p['retained_bytes_per_state']} | "
            f"{gens} | {p['gc_on']['pauses']['p99_ms']} / {p['gc_on']['pauses']['max_ms']} |"
        )
    fc = sdk["full_collection"]
    lines.append(
        f"\nA full collection with {sdk['sessions']:,} sessions open in one process: {fc['ms']} ms "
        f"({fc['tracked_objects']:,} tracked objects)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100, help="SDK sessions in this process")
    parser.add_argument("--rate", type=float, default=1000.0, help="states per second (SDK: deliveries, all sessions)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each window")
    args = parser.parse_args(argv)
    figures = run(sessions=args.sessions, rate=args.rate, seconds=args.seconds)
    sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
