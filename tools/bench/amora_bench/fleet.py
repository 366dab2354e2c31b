"""Fleet scale: simulated players and SDK sessions through the real broker and authz service.

``players`` simulated players (the agent's own core over its simulated backend, many in one
process) are registered through the authz admin API (keys + CSR) and each linked to its own
user; ``sessions`` SDK sessions (many per process) log in as those users through the real token
exchange and watch their user's devices. The players then change state at a combined ``rate``
per second for ``seconds``; every change is timed from the moment it is made on the player to
the moment the verified state comes out of each watching session's iterator.

Clocks: ``time.perf_counter_ns`` is CLOCK_MONOTONIC on Linux, shared by every process here, so
send and receive times from different processes compare directly.

Run alone: ``python -m amora_bench.fleet --players 140 --sessions 500 --seconds 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import time
from bisect import bisect_left
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_bench._common import cpu_seconds, latency_summary, raise_fd_limit, rss_mb

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["run"]

DEVICE_FMT = "fleet-{:04d}"
USER_FMT = "u{:04d}"
_SETUP_TIMEOUT_S = 600.0
_DRAIN_S = 3.0
_REGISTER_CONCURRENCY = 8


# -- player process ---------------------------------------------------------------------------


def _player_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Child process: run every simulated player; drive changes on "go"; report the changes."""
    logging.disable(logging.CRITICAL)
    import structlog  # noqa: PLC0415

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    raise_fd_limit()
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
    async with asyncio.timeout(_SETUP_TIMEOUT_S):
        await asyncio.gather(*(a.wait_online() for a in agents))
    # Long-lived set-up objects out of the cyclic GC's way (as a long-running service would do).
    gc.freeze()
    conn.send(("ready", len(agents)))
    await asyncio.to_thread(conn.recv)  # "go"
    rate, seconds, n = spec["rate"], spec["seconds"], len(sims)
    total = int(rate * seconds)
    changes: list[tuple[int, int, int]] = []
    cpu0, start = cpu_seconds(), time.perf_counter()
    k = 0
    while k < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while k < due:
            index = k % n
            volume = (k // n) % 100 + 1
            sims[index].apply(SetVolume(volume=volume))
            changes.append((index, volume, time.perf_counter_ns()))
            k += 1
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - start
    await asyncio.sleep(_DRAIN_S)
    figures = {"cpu_s": round(cpu_seconds() - cpu0, 2), "wall_s": round(elapsed, 2), "rss_mb": rss_mb()}
    conn.send(("changes", changes, figures))
    await asyncio.to_thread(conn.recv)  # "stop"
    for agent in agents:
        agent.stop()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- SDK session process ------------------------------------------------------------------------


def _sessions_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Child process: open the sessions, watch, record every verified state until "stop"."""
    logging.disable(logging.CRITICAL)
    raise_fd_limit()
    asyncio.run(_sessions(conn, spec))


async def _sessions(conn: Connection, spec: dict[str, Any]) -> None:
    import httpx  # noqa: PLC0415

    from amora_sync import AmoraClient, DeviceState, ReconnectPolicy  # noqa: PLC0415

    authz, users = spec["authz_url"], spec["users"]
    records: list[tuple[int, str, int, int]] = []  # (session, device, volume, t_ns)
    stop = asyncio.Event()
    ready: list[int] = []
    gate = asyncio.Semaphore(32)
    policy = ReconnectPolicy(initial_delay=0.2, max_delay=5.0, connect_timeout=60.0)
    stats: dict[str, int] = defaultdict(int)

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as http:

        def provider(user: str) -> Any:  # noqa: ANN401
            async def token() -> str:
                response = await http.post(f"{authz}/dev-issuer/token", json={"username": user})
                response.raise_for_status()
                return str(response.json()["access_token"])

            return token

        async def session(index: int, user: str) -> None:
            async with contextlib.AsyncExitStack() as stack:
                async with gate:
                    client = await stack.enter_async_context(
                        AmoraClient(authz, provider(user), ca_file=spec["ca_file"], reconnect=policy, http_client=http)
                    )
                    events = await stack.enter_async_context(client.watch(include_connection=False))
                ready.append(index)
                async for event in events:
                    if isinstance(event, DeviceState) and event.volume is not None:
                        records.append((index, event.device_id, event.volume, time.perf_counter_ns()))
                    if stop.is_set():
                        break
                stats["invalid"] += client.stats.invalid
                stats["superseded"] += events.superseded

        tasks = [asyncio.create_task(session(i, u), name=f"fleet.session[{i}]") for i, u in users]
        async with asyncio.timeout(_SETUP_TIMEOUT_S):
            while len(ready) < len(users):
                failed = [t for t in tasks if t.done() and t.exception() is not None]
                if failed:
                    raise RuntimeError(f"session failed: {failed[0].exception()!r}")
                await asyncio.sleep(0.1)
        gc.freeze()
        conn.send(("ready", len(ready), rss_mb()))
        cpu0 = cpu_seconds()
        await asyncio.to_thread(conn.recv)  # "stop"
        cpu = cpu_seconds() - cpu0
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(("records", records, {"cpu_s": round(cpu, 2), "rss_mb": rss_mb(), **stats}))


# -- orchestration ------------------------------------------------------------------------------


def _register(authz_url: str, admin: str, work: Path, players: int) -> list[dict[str, str]]:
    """Register and link every player through the admin API; return what the player process needs."""
    import httpx  # noqa: PLC0415
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    from amora_protocol import EncryptionKey, SigningKey  # noqa: PLC0415

    headers = {"Authorization": f"Bearer {admin}"}

    async def one(http: httpx.AsyncClient, gate: asyncio.Semaphore, i: int) -> dict[str, str]:
        device = DEVICE_FMT.format(i)
        signing, encryption = SigningKey.generate(), EncryptionKey.generate()
        tls_key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device)]))
            .sign(tls_key, hashes.SHA256())
        )
        folder = work / "devices" / device
        folder.mkdir(parents=True, exist_ok=True)
        body = {
            "device_id": device,
            "signing_key": base64.b64encode(signing.public_key.raw).decode(),
            "encryption_key": base64.b64encode(encryption.public_key.raw).decode(),
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        }
        async with gate:
            response = await http.post("/v1/admin/devices", json=body, headers=headers)
            response.raise_for_status()
            linked = await http.put(f"/v1/admin/users/{USER_FMT.format(i)}/devices/{device}", headers=headers)
            linked.raise_for_status()
        (folder / "device.pem").write_text(response.json()["certificate"])
        (folder / "device.key").write_bytes(
            tls_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return {
            "id": device,
            "cert": str(folder / "device.pem"),
            "key": str(folder / "device.key"),
            "signing": signing.to_raw().hex(),
            "state_dir": str(folder / "state"),
        }

    async def all_devices() -> list[dict[str, str]]:
        gate = asyncio.Semaphore(_REGISTER_CONCURRENCY)
        async with httpx.AsyncClient(base_url=authz_url, timeout=120) as http:
            return list(await asyncio.gather(*(one(http, gate, i) for i in range(players))))

    return asyncio.run(all_devices())


def _expect(conn: Connection, kind: str, timeout: float) -> tuple[Any, ...]:
    if not conn.poll(timeout):
        raise TimeoutError(f"no {kind!r} from a child process within {timeout} s")
    message = conn.recv()
    if message[0] != kind:
        raise RuntimeError(f"expected {kind!r}, got {message[0]!r}")
    return tuple(message[1:])


def _slow_breakdown(
    changes: list[tuple[int, int, int]], per_change: list[list[tuple[int, float]]], sdk_processes: int
) -> dict[str, Any]:
    """Where deliveries over 10 ms come from: one process, one moment, or every watcher at once."""
    start = changes[0][2] if changes else 0
    by_process: dict[int, int] = defaultdict(int)
    by_second: dict[int, int] = defaultdict(int)
    all_watchers_slow = 0
    slow_total = 0
    for (_, _, t0), deliveries in zip(changes, per_change, strict=True):
        slow = [s for s, ms in deliveries if ms > 10]
        if not slow:
            continue
        slow_total += len(slow)
        all_watchers_slow += len(slow) == len(deliveries)
        by_second[(t0 - start) // 1_000_000_000] += len(slow)
        for session in slow:
            by_process[session % sdk_processes] += 1
    return {
        "slow_deliveries": slow_total,
        "changes_with_every_watcher_slow": all_watchers_slow,
        "slow_by_sdk_process": dict(sorted(by_process.items())),
        "slow_by_second": dict(sorted(by_second.items())),
    }


def _analyse(
    changes: list[tuple[int, int, int]], records: list[tuple[int, str, int, int]], sessions_of: dict[int, list[int]]
) -> tuple[list[float], int, int, list[list[tuple[int, float]]]]:
    """Match each change to each watching session's first verified receipt of it."""
    received: dict[tuple[int, str, int], list[int]] = defaultdict(list)
    for session, device, volume, t in records:
        received[session, device, volume].append(t)
    for times in received.values():
        times.sort()
    latencies: list[float] = []
    per_change: list[list[tuple[int, float]]] = []
    expected = 0
    for index, volume, t0 in changes:
        device = DEVICE_FMT.format(index)
        deliveries: list[tuple[int, float]] = []
        for session in sessions_of.get(index, []):
            expected += 1
            times = received.get((session, device, volume), [])
            at = bisect_left(times, t0)
            if at < len(times):
                deliveries.append((session, (times[at] - t0) / 1e6))
        latencies += [ms for _, ms in deliveries]
        per_change.append(deliveries)
    return latencies, expected, len(latencies), per_change


def run(  # noqa: PLR0915 - one orchestration, step by step
    *, players: int = 1400, sessions: int = 5000, rate: float = 1000.0, seconds: float = 30.0, sdk_processes: int = 2
) -> dict[str, Any]:
    """Run the fleet scenario and return its figures."""
    from amora_devtools.broker import start_broker  # noqa: PLC0415
    from amora_devtools.pki import DevPKI  # noqa: PLC0415
    from amora_devtools.stack import start_authz  # noqa: PLC0415

    if rate * seconds / players >= 100:
        raise ValueError("each player may change at most 99 times per run (changes are told apart by volume)")
    raise_fd_limit()
    ctx = mp.get_context("spawn")
    figures: dict[str, Any] = {"players": players, "sessions": sessions, "rate_per_s": rate, "seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="amora-bench-fleet-") as tmp:
        work = Path(tmp)
        pki = DevPKI.create(work / "pki")
        users = [USER_FMT.format(i) for i in range(players)]
        with start_broker(work / "brokers", pki) as broker:
            authz, url = start_authz(work / "authz", pki, [broker], users=[*users, "admin"], rate_limits=False)
            children: list[Any] = []
            try:
                import httpx  # noqa: PLC0415

                admin = httpx.post(f"{url}/dev-issuer/token", json={"username": "admin"}, timeout=10).json()
                keys = [k["public_key"] for k in httpx.get(f"{url}/.well-known/amora-keys", timeout=10).json()["keys"]]
                t = time.perf_counter()
                devices = _register(url, admin["access_token"], work, players)
                figures["setup_register_s"] = round(time.perf_counter() - t, 1)

                t = time.perf_counter()
                player_conn, child_conn = ctx.Pipe()
                player_spec = {
                    "devices": devices,
                    "authz_keys": keys,
                    "host": broker.host,
                    "device_port": broker.device_port,
                    "ca_file": str(pki.ca_file),
                    "rate": rate,
                    "seconds": seconds,
                }
                player_proc = ctx.Process(target=_player_main, args=(child_conn, player_spec), name="fleet-players")
                player_proc.start()
                children.append(player_proc)
                _expect(player_conn, "ready", _SETUP_TIMEOUT_S)
                figures["setup_players_online_s"] = round(time.perf_counter() - t, 1)

                t = time.perf_counter()
                assignments = [(s, USER_FMT.format(s % players)) for s in range(sessions)]
                sessions_of: dict[int, list[int]] = defaultdict(list)
                for s, _ in assignments:
                    sessions_of[s % players].append(s)
                session_conns = []
                for p in range(sdk_processes):
                    parent, child = ctx.Pipe()
                    spec = {"authz_url": url, "ca_file": str(pki.ca_file), "users": assignments[p::sdk_processes]}
                    proc = ctx.Process(target=_sessions_main, args=(child, spec), name=f"fleet-sdk-{p}")
                    proc.start()
                    children.append(proc)
                    session_conns.append(parent)
                sdk_ready_rss = [_expect(c, "ready", _SETUP_TIMEOUT_S)[1] for c in session_conns]
                figures["setup_sessions_s"] = round(time.perf_counter() - t, 1)
                figures["broker_rss_mb_idle"] = rss_mb(broker.pid)

                broker_cpu0 = cpu_seconds(broker.pid)
                player_conn.send("go")
                changes, player_figures = _expect(player_conn, "changes", seconds + 120)
                broker_cpu = cpu_seconds(broker.pid) - broker_cpu0
                records: list[tuple[int, str, int, int]] = []
                sdk_figures = []
                for c in session_conns:
                    c.send("stop")
                for c in session_conns:
                    got, stats = _expect(c, "records", 120)
                    records += got
                    sdk_figures.append(stats)
                player_conn.send("stop")
                latencies, expected, delivered, per_change = _analyse(changes, records, sessions_of)
                figures["over_10ms"] = _slow_breakdown(changes, per_change, sdk_processes)
                figures.update(
                    {
                        "sent": len(changes),
                        "achieved_rate_per_s": round(len(changes) / player_figures["wall_s"]),
                        "expected": expected,
                        "delivered": delivered,
                        "lost": expected - delivered,
                        "latency": latency_summary(latencies),
                        "connections": players + sessions,
                        "processes": {
                            "players": {
                                "cpu_percent": round(100 * player_figures["cpu_s"] / player_figures["wall_s"]),
                                "rss_mb": player_figures["rss_mb"],
                            },
                            "sdk": [
                                {
                                    "cpu_percent": round(100 * s["cpu_s"] / player_figures["wall_s"]),
                                    "rss_mb": s["rss_mb"],
                                    "rss_mb_ready": r,
                                    "invalid": s.get("invalid", 0),
                                    "superseded": s.get("superseded", 0),
                                }
                                for s, r in zip(sdk_figures, sdk_ready_rss, strict=True)
                            ],
                            "broker": {
                                "cpu_percent": round(100 * broker_cpu / player_figures["wall_s"]),
                                "rss_mb": rss_mb(broker.pid),
                            },
                            "authz": {"rss_mb": rss_mb(authz.pid)},
                        },
                        "latency_sets": {
                            "player change -> verified state at each watching session": [
                                round(x, 3) for x in latencies[:: max(1, len(latencies) // 20000)]
                            ]
                        },
                    }
                )
                for proc in children:
                    proc.join(60)
            finally:
                for proc in children:
                    if proc.is_alive():
                        proc.kill()
                        proc.join(10)
                authz.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", type=int, default=140)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sdk-processes", type=int, default=2)
    args = parser.parse_args(argv)
    figures = run(
        players=args.players,
        sessions=args.sessions,
        rate=args.rate,
        seconds=args.seconds,
        sdk_processes=args.sdk_processes,
    )
    figures.pop("latency_sets", None)
    sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
