r"""Garbage on the hot paths: what each state costs CPython's cyclic collector, in the SDK and in the agent.

CPython frees most objects by reference counting. Its cyclic collector runs when GC-tracked
objects allocated minus those freed pass a threshold (700) since its last run, and each run
walks every young tracked object. A freed object lowers that count only while it is above
zero, so what sets the collector off in a long-running process is not only what grows:
every tracked object that outlives the loop step that made it (a timer re-armed, a future
and coroutine waiting, a handle scheduled) pushes the count up, and a process of thousands
of clients re-arming timers reaches 700 every few seconds with nothing growing at all. So a
hot path costs the collector through:

* ``tracked_per_state``: net GC-tracked objects per state (allocated minus freed), measured
  with the collector off: what grows;
* ``cyclic_per_state``: objects per state that only the collector can free (reference cycles),
  counted by one collection after that window;
* ``retained_bytes_per_state`` / ``peak_kib``: tracemalloc's view, in a window of its own
  (tracing slows everything down);
* ``frozen``: a window run as the fleet's load generators run (everything made before it
  frozen, ``gc.freeze()``, collector on): collections per 10,000 states, the young objects
  each walked, what they were (``young_kinds``: counted at each collection's start), and the
  callbacks scheduled on the event loop per state (``call_soon``/``call_at``: each one a
  handle with a future or a timer behind it, whatever the machine's load);
* ``idle``: the same before any state flows: callbacks per open client (or player) per second;
* the pauses themselves: every collection in a window with the collector on (Python's
  defaults), and one full collection timed with all ``sessions`` open.

Two paths, each alone in this process, on the real broker (TLS, dynamic security):

* ``sdk``: ``sessions`` `AmoraClient`\ s each watching one device whose signed, retained QoS 1
  states a separate process publishes at ``rate / sessions`` per second (each session verifies
  each state: ``rate`` deliveries per second in all); counted per state handed out by a watch;
* ``agent``: ``agents`` real `Agent`\ s over `SimulatedPlayer`\ s (mTLS on the device listener,
  as the fleet's players process) each publishing one state per volume change, changes made
  round robin at ``rate``/s (at most 50/s per agent); counted per state published.

Run alone: ``python -m amora_bench.garbage --sessions 100 --agents 20 --seconds 3``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from amora_bench._common import broker_for_bench
from amora_bench._fleetproc import PACING_S
from amora_bench._gcstats import GcRecorder, full_collection
from amora_bench._rig import device_identity, mock_session_client, session_identity, start_publisher

if TYPE_CHECKING:
    import contextvars
    from collections.abc import Callable

    from amora_devtools.broker import BrokerProcess

__all__ = ["run"]

_WARMUP_S = 1.0
_AGENT_RATE = 50.0  # changes per second per agent at most: a player changes far less often
_KINDS_SHOWN = 8
_IDLE_S = 10.0  # the idle windows: two of the fleet's SDK liveness intervals, several of the agent's


class _CountingLoop(asyncio.SelectorEventLoop):
    """The default event loop, counting the callbacks scheduled on it.

    Every ``call_soon`` (a future's done callbacks, a task's next step) and ``call_at`` (a
    timer: ``asyncio.sleep``, ``asyncio.timeout``) makes a handle, and behind it usually a
    future, a coroutine or a timer: a count of the loop's work that does not depend on how
    busy the machine is.
    """

    scheduled = 0

    def call_soon(
        self, callback: Callable[..., object], *args: object, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        self.scheduled += 1
        return super().call_soon(callback, *args, context=context)

    def call_at(
        self, when: float, callback: Callable[..., object], *args: object, context: contextvars.Context | None = None
    ) -> asyncio.TimerHandle:
        self.scheduled += 1
        return super().call_at(when, callback, *args, context=context)


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


async def _recorded(recorder: GcRecorder, delivered: Callable[[], int], seconds: float) -> int:
    """Wait ``seconds`` with ``recorder`` on; return how many states went by meanwhile."""
    recorder.start()
    d0 = delivered()
    try:
        await asyncio.sleep(seconds)
    finally:
        recorder.stop()
    return delivered() - d0


async def _paused(delivered: Callable[[], int], seconds: float) -> dict[str, Any]:
    recorder = GcRecorder()
    states = await _recorded(recorder, delivered, seconds)
    return {"states": states, "pauses": recorder.summary()}


async def _frozen(delivered: Callable[[], int], seconds: float, *, per: int) -> dict[str, Any]:
    """A window as the fleet's load generators run it: set-up frozen, collector on.

    Per state (``per`` = 0) or, with no states flowing, per ``per`` open clients and second.
    """
    loop = asyncio.get_running_loop()
    scheduled = loop.scheduled if isinstance(loop, _CountingLoop) else 0
    gc.collect()
    gc.freeze()
    recorder = GcRecorder(census=True)
    try:
        states = await _recorded(recorder, delivered, seconds)
    finally:
        gc.unfreeze()
    callbacks = (loop.scheduled if isinstance(loop, _CountingLoop) else 0) - scheduled
    collections = len(recorder.pauses)
    result: dict[str, Any] = {
        "states": states,
        "collections": collections,
        "young_per_collection": round(sum(recorder.young) / collections) if collections else 0,
        "young_kinds": dict(recorder.young_kinds.most_common(_KINDS_SHOWN)),
        "pauses": recorder.summary(),
    }
    if per:
        result["callbacks_per_client_s"] = round(callbacks / (per * seconds), 2)
        result["collections_per_1000_client_s"] = round(1000 * collections / (per * seconds), 2)
    else:
        result["callbacks_per_state"] = round(callbacks / max(1, states), 2)
        result["collections_per_10k_states"] = round(10_000 * collections / max(1, states), 2)
    return result


async def _measure_path(delivered: Callable[[], int], seconds: float) -> dict[str, Any]:
    await asyncio.sleep(_WARMUP_S)
    result = await _window(delivered, seconds)
    result["frozen"] = await _frozen(delivered, seconds, per=0)
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
    # The fleet's SDK processes' policy (`_fleetproc`): probe after 5 s of silence. States
    # arrive more often than that here, so no probe is sent, but each session's liveness timer
    # is re-armed every 5 s, as there.
    quiet_links = ReconnectPolicy(liveness_interval=5.0, liveness_timeout=10.0, connect_timeout=60.0)

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
    # No state flows yet. At least two liveness intervals (5 s): each session re-arms its timer once per interval.
    idle = await _frozen(lambda: count[0], max(seconds, _IDLE_S), per=sessions)
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
        "idle": idle,
        **result,
    }


async def _agent_path(broker: BrokerProcess, *, agents: int, rate: float, seconds: float) -> dict[str, Any]:
    from amora_agent import Agent, AgentOptions, BrokerEndpoint, SimulatedPlayer, TlsConfig, client_ssl_context  # noqa: PLC0415
    from amora_protocol import SetVolume, SigningKey  # noqa: PLC0415

    players = [SimulatedPlayer() for _ in range(agents)]
    trusted = [SigningKey.generate().public_key]
    # As the fleet's players process: durable off, slow backoff, a long keep-alive.
    options = AgentOptions(durable=False, backoff_initial_s=1.0, connect_timeout_s=60, keepalive_s=120)
    with tempfile.TemporaryDirectory(prefix="amora-bench-garbage-") as tmp:
        fleet: list[Agent] = []
        ca_file = str(broker.ca_file)
        for i, player in enumerate(players):
            device_id = f"bench-garbage-agent-{i:04d}"
            (cert, key), signing_raw, _ = device_identity(broker, device_id)
            state_dir = Path(tmp) / device_id
            state_dir.mkdir()
            fleet.append(
                Agent(
                    device_id=device_id,
                    signing_key=SigningKey.from_raw(signing_raw),
                    trusted_keys=trusted,
                    endpoints=[BrokerEndpoint(host=broker.host, port=broker.device_port)],
                    ssl_context=client_ssl_context(TlsConfig(ca_file=ca_file, cert_file=cert, key_file=key)),
                    state_dir=state_dir,
                    player=player,
                    options=options,
                )
            )
        tasks = [asyncio.create_task(agent.run(), name="amora-bench.garbage-agent") for agent in fleet]
        await asyncio.wait_for(asyncio.gather(*(agent.wait_online() for agent in fleet)), 120)
        first = [agent.state.version if agent.state else 0 for agent in fleet]

        def published() -> int:
            return sum((a.state.version if a.state else f) - f for a, f in zip(fleet, first, strict=True))

        idle = await _frozen(published, max(seconds, _IDLE_S), per=agents)  # no change made yet

        async def drive() -> None:
            k, start = 0, time.perf_counter()
            while True:
                due = int((time.perf_counter() - start) * rate)
                while k < due:
                    # Round robin, a new volume each time (as the fleet's players process).
                    players[k % agents].apply(SetVolume(volume=(k // agents) % 100 + 1))
                    k += 1
                await asyncio.sleep(PACING_S)

        driver = asyncio.create_task(drive(), name="amora-bench.garbage-driver")
        try:
            result = await _measure_path(published, seconds)
        finally:
            driver.cancel()
            for agent in fleet:
                agent.stop()
            await asyncio.gather(driver, *tasks, return_exceptions=True)
    return {"agents": agents, "rate_per_s": rate, "idle": idle, **result}


def run(*, sessions: int = 100, agents: int = 20, rate: float = 1000.0, seconds: float = 3.0) -> dict[str, Any]:
    """Measure both paths on a fresh broker; return the figures (agents log warnings only meanwhile)."""
    logging_config = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        return _run(sessions=sessions, agents=agents, rate=rate, seconds=seconds)
    finally:
        structlog.configure(**logging_config)


def _run(*, sessions: int, agents: int, rate: float, seconds: float) -> dict[str, Any]:

    async def both() -> dict[str, Any]:
        with broker_for_bench() as broker:
            sdk = await _sdk_path(broker, sessions=sessions, rate=rate, seconds=seconds)
            # Each agent publishes QoS 1 with at most 16 unacknowledged: a few dozen changes a
            # second per player is already far beyond any; more only measures refused publishes.
            agent = await _agent_path(broker, agents=agents, rate=min(rate, _AGENT_RATE * agents), seconds=seconds)
        return {"sdk": sdk, "agent": agent}

    with asyncio.Runner(loop_factory=_CountingLoop) as runner:
        figures = runner.run(both())
    figures["summary"] = _summary(figures)
    return figures


def _summary(f: dict[str, Any]) -> str:
    sdk, agent = f["sdk"], f["agent"]
    lines = [
        (
            "| path | GC-tracked objects / state (net) | cyclic garbage / state | retained bytes / state | "
            "frozen as the fleet: collections / 10k states | young objects walked each | loop callbacks / state | "
            "idle: loop callbacks / client / s | collections (gen 0/1/2) in the GC-on window | pause p99 / max (ms) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    paths = (
        (f"SDK, {sdk['sessions']:,} sessions (per state delivered)", sdk),
        (f"agent, {agent['agents']:,} players (per state published)", agent),
    )
    for name, p in paths:
        by = p["gc_on"]["pauses"]["by_generation"]
        gens = "/".join(str(by.get(str(g), {}).get("count", 0)) for g in range(3))
        frozen, idle = p["frozen"], p["idle"]
        lines.append(
            f"| {name} | {p['tracked_per_state']} | {p['cyclic_per_state']} | {p['retained_bytes_per_state']} | "
            f"{frozen['collections_per_10k_states']} ({frozen['collections']} in {frozen['states']:,}) | "
            f"{frozen['young_per_collection']:,} | {frozen['callbacks_per_state']} | "
            f"{idle['callbacks_per_client_s']} | {gens} | "
            f"{p['gc_on']['pauses']['p99_ms']} / {p['gc_on']['pauses']['max_ms']} |"
        )
    for name, p in paths:
        for window in ("idle", "frozen"):
            kinds = ", ".join(f"{k} {v:,}" for k, v in p[window]["young_kinds"].items())
            if kinds:
                lines.append(f"\n{name}, {window}: young objects at its collections, by kind: {kinds}.")
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
    parser.add_argument("--agents", type=int, default=20, help="simulated players (agents) in this process")
    parser.add_argument("--rate", type=float, default=1000.0, help="states per second (SDK: deliveries, all sessions)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each window")
    args = parser.parse_args(argv)
    figures = run(sessions=args.sessions, agents=args.agents, rate=args.rate, seconds=args.seconds)
    sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
