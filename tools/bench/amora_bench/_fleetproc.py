"""The fleet's load-generating child processes: simulated players, SDK sessions, idle connections.

Each talks to the orchestrator (`amora_bench.fleet`) over a pipe. What they record goes into
``array.array`` columns, not tuples: a record per delivery would otherwise be a GC-tracked
object per delivery, and the harness's own garbage would trigger the very collector pauses
the run is meant to tell apart from the product's latency. Every collection in each of these
processes is timed (`GcRecorder`) and sent back with the records.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import time
from array import array
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_bench._common import cpu_seconds, raise_fd_limit, rss_mb
from amora_bench._gcstats import GcRecorder, full_collection, window_policy

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["DEVICE_FMT", "PACING_S", "USER_FMT", "device_index", "holder_main", "player_main", "sessions_main"]

DEVICE_FMT = "fleet-{:05d}"
USER_FMT = "u{:05d}"
SETUP_TIMEOUT_S = 1800.0
# Thousands of sessions log in at once here, 32 at a time, on a machine that may be busy: far
# longer than an app would wait (the SDK's 15 s default) before calling a login failed.
SETUP_CONNECT_TIMEOUT_S = 180.0
DRAIN_S = 3.0
# The players process makes the changes due every 5 ms (5 at 1,000 changes/s), each stamped as
# it is made: a tick per millisecond was a sleep (coroutine, future, timer, handles) a
# millisecond, as much churn for the collector as the liveness timers of all 1,400 agents.
PACING_S = 0.005
_DEVICE_PREFIX = len("fleet-")


def device_index(device_id: str) -> int:
    """The player number in a fleet device id."""
    return int(device_id[_DEVICE_PREFIX:])


def _quiet() -> None:
    logging.disable(logging.CRITICAL)
    import structlog  # noqa: PLC0415

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    raise_fd_limit()


def _pauses_since(recorder: GcRecorder, since_ns: int) -> list[tuple[int, float]]:
    return [(t, ms) for _, t, ms in recorder.pauses if t >= since_ns]


# -- players ----------------------------------------------------------------------------------


def player_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Child process: run every simulated player; make changes per window asked for."""
    _quiet()
    asyncio.run(_players(conn, spec))


async def _players(conn: Connection, spec: dict[str, Any]) -> None:
    from amora_agent import Agent, AgentOptions, BrokerEndpoint, SimulatedPlayer, TlsConfig, client_ssl_context  # noqa: PLC0415
    from amora_protocol import SetVolume, SigningKey, VerifyKey  # noqa: PLC0415

    trusted = [VerifyKey.from_raw(base64.b64decode(k)) for k in spec["authz_keys"]]
    endpoint = [BrokerEndpoint(host=spec["host"], port=spec["device_port"])]
    options = AgentOptions(durable=False, backoff_initial_s=1.0, connect_timeout_s=60, keepalive_s=120)
    agents, sims = [], []
    for device in spec["devices"]:
        ctx = client_ssl_context(TlsConfig(ca_file=spec["ca_file"], cert_file=device["cert"], key_file=device["key"]))
        sim = SimulatedPlayer()
        sims.append(sim)
        agents.append(
            Agent(
                device_id=device["id"],
                signing_key=SigningKey.from_raw(bytes.fromhex(device["signing"])),
                trusted_keys=trusted,
                endpoints=endpoint,
                ssl_context=ctx,
                state_dir=Path(device["state_dir"]),
                player=sim,
                options=options,
            )
        )
    tasks = [asyncio.create_task(a.run(), name=f"fleet.agent[{a.device_id}]") for a in agents]
    async with asyncio.timeout(SETUP_TIMEOUT_S):
        await asyncio.gather(*(a.wait_online() for a in agents))
    recorder = GcRecorder()
    window_policy(spec["gc"], collect=False)
    recorder.start()
    conn.send(("ready", len(agents)))
    n, k = len(sims), 0  # k counts every change of the run: volumes never repeat back to back
    while True:
        message = await asyncio.to_thread(conn.recv)
        if message[0] != "window":
            break
        _, rate, seconds = message
        total = int(rate * seconds)
        players, volumes, stamps = array("q"), array("q"), array("q")
        t_start, cpu0, start = time.perf_counter_ns(), cpu_seconds(), time.perf_counter()
        j = 0
        while j < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while j < due:
                index, volume = k % n, (k // n) % 100 + 1
                sims[index].apply(SetVolume(volume=volume))
                players.append(index)
                volumes.append(volume)
                stamps.append(time.perf_counter_ns())
                k += 1
                j += 1
            await asyncio.sleep(PACING_S)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds() - cpu0
        await asyncio.sleep(DRAIN_S)
        figures = {
            "offline_agents": sum(agent.broker is None for agent in agents),
            "cpu_s": round(cpu, 2),
            "wall_s": round(elapsed, 2),
            "rss_mb": rss_mb(),
            "gc": recorder.summary(t_start),
            "gc_pauses": _pauses_since(recorder, t_start),
        }
        conn.send(("changes", players, volumes, stamps, figures))
    recorder.stop()
    for agent in agents:
        agent.stop()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- SDK sessions -------------------------------------------------------------------------------


def sessions_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Child process: open the sessions, watch, record every verified state; hand records over on "mark"."""
    _quiet()
    asyncio.run(_sessions(conn, spec))


class _Records:
    """Deliveries as four integer columns: session, player, volume, receive instant (ns)."""

    def __init__(self) -> None:
        self.session, self.player, self.volume, self.at = array("q"), array("q"), array("q"), array("q")

    def add(self, session: int, player: int, volume: int) -> None:
        self.session.append(session)
        self.player.append(player)
        self.volume.append(volume)
        self.at.append(time.perf_counter_ns())

    def columns(self) -> tuple[array[int], array[int], array[int], array[int]]:
        return self.session, self.player, self.volume, self.at


async def _sessions(conn: Connection, spec: dict[str, Any]) -> None:  # noqa: C901, PLR0915 - one process's life
    import httpx  # noqa: PLC0415

    from amora_sync import AmoraClient, AuthzUnavailableError, DeviceState, ReconnectPolicy  # noqa: PLC0415

    authz, users = spec["authz_url"], spec["users"]
    records = _Records()
    ready: list[int] = []
    gate = asyncio.Semaphore(32)
    # A process holding thousands of sessions on a shared machine can stall for seconds (its
    # own full collection takes one or two): longer than an app's liveness timeout (2 s), and
    # every session whose probe was in flight would leave the broker and come back mid-window.
    policy = ReconnectPolicy(
        initial_delay=0.2, max_delay=5.0, connect_timeout=60.0, liveness_interval=5.0, liveness_timeout=10.0
    )
    opened: list[tuple[Any, Any]] = []
    exchange_retries: list[int] = []

    # Idle pooled connections expire before the service's keep-alive timeout (5 s): otherwise
    # a request races the server closing its connection and fails with a ReadError.
    limits = httpx.Limits(max_connections=32, keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        def provider(user: str) -> Any:  # noqa: ANN401
            async def token() -> str:
                # The development issuer stands in for the identity provider; a pooled
                # connection the server closed while idle fails once (ReadError): ask again.
                for attempt in range(3):
                    try:
                        response = await http.post(f"{authz}/dev-issuer/token", json={"username": user})
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
                        await asyncio.sleep(0.2)
                        continue
                    response.raise_for_status()
                    return str(response.json()["access_token"])
                raise AssertionError  # pragma: no cover - the loop returns or raises

            return token

        async def open_client(stack: contextlib.AsyncExitStack, user: str) -> Any:  # noqa: ANN401
            # The exchange shares this process's connection pool; a pooled connection the
            # service closed while this process stalled fails the request (ReadError, as
            # AuthzUnavailableError). An app would try again; so does the harness, counted.
            for attempt in range(3):
                client = AmoraClient(
                    authz,
                    provider(user),
                    ca_file=spec["ca_file"],
                    reconnect=policy,
                    http_client=http,
                    connect_timeout=SETUP_CONNECT_TIMEOUT_S,
                )
                try:
                    return await stack.enter_async_context(client)
                except AuthzUnavailableError:
                    if attempt == 2:  # the third try's failure is final
                        raise
                    exchange_retries.append(1)
            raise AssertionError  # pragma: no cover - the loop returns or raises

        async def session(index: int, user: str) -> None:
            async with contextlib.AsyncExitStack() as stack:
                async with gate:
                    client = await open_client(stack, user)
                    events = await stack.enter_async_context(client.watch(include_connection=False))
                opened.append((client, events))
                ready.append(index)
                async for event in events:
                    if isinstance(event, DeviceState) and event.volume is not None:
                        records.add(index, device_index(event.device_id), event.volume)

        tasks = [asyncio.create_task(session(i, u), name=f"fleet.session[{i}]") for i, u in users]
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            while len(ready) < len(users):
                failed = [t for t in tasks if t.done() and t.exception() is not None]
                if failed:
                    raise RuntimeError(f"session failed: {failed[0].exception()!r}")
                await asyncio.sleep(0.1)
        recorder = GcRecorder()
        window_policy(spec["gc"], collect=False)  # no collection now: it would stall every session
        recorder.start()
        conn.send(("ready", len(ready), rss_mb(), len(exchange_retries)))
        cpu0, since = cpu_seconds(), time.perf_counter_ns()
        while await asyncio.to_thread(conn.recv) == "mark":
            done, records = records, _Records()
            stats: dict[str, Any] = defaultdict(int)
            for client, events in opened:
                stats["invalid"] += client.stats.invalid
                stats["superseded"] += events.superseded
                stats["received"] += client.stats.received
                stats["stale"] += client.stats.stale
                stats["reconnects"] += client.stats.connects - 1
            now_cpu = cpu_seconds()
            figures = {
                **stats,
                "cpu_s": round(now_cpu - cpu0, 2),
                "rss_mb": rss_mb(),
                "gc": recorder.summary(since),
                "gc_pauses": _pauses_since(recorder, since),
            }
            cpu0, since = now_cpu, time.perf_counter_ns()
            conn.send(("records", *done.columns(), figures))
        recorder.stop()
        unreachable = None
        if spec["gc"] == "off":  # what the windows left for the collector, collected now
            gc.enable()
            unreachable = gc.collect()
        # Every session still open: the longest pause this process can have (unfrozen first).
        gc.unfreeze()
        pause = full_collection()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(("stopped", {"unreachable_after_window": unreachable, "full_collection": pause}))


# -- idle connections ---------------------------------------------------------------------------


def holder_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Child process: hold idle TLS app connections, as many as asked for ("hold", n)."""
    raise_fd_limit()
    asyncio.run(_hold(conn, spec))


async def _hold(conn: Connection, spec: dict[str, Any]) -> None:
    import asyncio.sslproto  # noqa: PLC0415
    import ssl  # noqa: PLC0415

    from amora_bench._rawmqtt import RawMqtt  # noqa: PLC0415

    asyncio.sslproto.SSLProtocol.max_size = 32 * 1024  # see connections._small_tls_buffers
    context = ssl.create_default_context(cafile=spec["ca_file"])
    held: list[RawMqtt] = []
    gate = asyncio.Semaphore(64)
    hosts = [f"127.0.0.{i}" for i in range(2, 10)]

    async def one(i: int) -> None:
        async with gate:
            for attempt in range(5):
                try:
                    connection = await RawMqtt.connect(
                        spec["host"],
                        spec["port"],
                        ssl_context=context,
                        client_id=f"idle-{i}",
                        username=spec["username"],
                        password=spec["password"],
                        local_host=hosts[i % len(hosts)],
                    )
                except (OSError, asyncio.IncompleteReadError, ConnectionError):
                    await asyncio.sleep(0.2 * (attempt + 1))
                else:
                    held.append(connection)
                    return

    conn.send(("ready",))
    while (message := await asyncio.to_thread(conn.recv))[0] == "hold":
        target = message[1]
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(len(held), target)))
        conn.send(("held", len(held), round(time.perf_counter() - start, 1), rss_mb()))
    for c in held:
        c.close()
    conn.send(("stopped",))
