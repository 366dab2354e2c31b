"""Fleet scale: simulated players and SDK sessions through the real broker and authz service.

``players`` simulated players (the agent's own core over its simulated backend, many in one
process) are registered through the authz admin API (keys + CSR) and each linked to its own
user; ``sessions`` SDK sessions log in as those users through the real token exchange and
watch their user's devices. Session ``s`` watches player ``s % players``; sessions go to SDK
process ``(s // players) % sdk_processes``, so the watchers of one player are spread over the
SDK processes (not all in one, where one process's pause would delay every watcher at once).

The players then change state at ``rate`` per second for ``seconds`` (the main window); every
change is timed from the moment it is made on the player to the moment the verified state
comes out of each watching session's iterator. In the same set-up, further windows can follow:
a rate sweep (``rates``, stopping at the first whose p99 passes 30 ms: saturation) and a
held-connection sweep (``held``: idle TLS app connections from one more process bring the
broker's connection count to each level, then a window at ``rate``).

The load generators (players process, SDK processes) hold thousands of clients each, which no
deployment does; their garbage collector runs under ``gc`` (`amora_bench._gcstats.GcPolicy`,
default ``frozen``: set-up objects frozen, collector on) and every pause is timed and reported
on its own, with the late deliveries that overlapped one. A sampler records each component's
CPU every 100 ms, the load average, and the authz service's full reconcile passes, on the same
clock as the deliveries (`amora_bench._monitor`).

Clocks: ``time.perf_counter_ns`` is CLOCK_MONOTONIC on Linux, shared by every process here, so
send and receive times from different processes compare directly.

``credentials="token"`` runs the service in token mode (ADR 0015): the sessions log in with
broker tokens checked by the broker's ``amora_auth`` plugin, so their thousands of logins
write nothing to the broker (8,000 dynsec logins took over 30 minutes of set-up on a loaded
machine); the deliveries' ACL checks are then the plugin's instead of dynamic security's.

Run alone: ``python -m amora_bench.fleet --players 140 --sessions 500 --seconds 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_bench._common import raise_fd_limit, rss_mb
from amora_bench._fleetanalysis import Window, analyse_window
from amora_bench._fleetproc import (
    DEVICE_FMT,
    SETUP_TIMEOUT_S,
    USER_FMT,
    holder_main,
    player_main,
    sessions_main,
)
from amora_bench._monitor import Monitor

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from amora_bench._gcstats import GcPolicy

__all__ = ["run"]

_REGISTER_CONCURRENCY = 8
SATURATION_P99_MS = 30.0
_IDLE_USER = "bench-idle"
_IDLE_PASSWORD = "bench-idle-password"  # noqa: S105 - a throwaway account on a throwaway broker


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
        key_file = folder / "device.key"
        key_file.touch(mode=0o600)  # the agent refuses a private key others can read
        key_file.write_bytes(
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


_CHILDREN: list[Any] = []  # this run's child processes: a dead one ends the wait for its answer


def _expect(conn: Connection, kind: str, timeout: float) -> tuple[Any, ...]:
    deadline = time.monotonic() + timeout
    while not conn.poll(1.0):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {kind!r} from a child process within {timeout} s")
        dead = [c for c in _CHILDREN if c.exitcode not in (None, 0)]
        if dead:
            raise RuntimeError(f"child process {dead[0].name} died (exit {dead[0].exitcode}) before {kind!r}")
    try:
        message = conn.recv()
    except EOFError:
        raise RuntimeError(f"a child process ended before sending {kind!r} (its error is above)") from None
    if message[0] != kind:
        raise RuntimeError(f"expected {kind!r}, got {message[0]!r}")
    return tuple(message[1:])


class _Fleet:
    """The running fleet: pipes to the children, the monitor, and how to run one window."""

    def __init__(  # noqa: PLR0913 - the running parts
        self,
        *,
        players: int,
        sessions_of: dict[int, list[int]],
        sdk_process_of: dict[int, int],
        player_conn: Connection,
        session_conns: list[Connection],
        monitor: Monitor,
        pids: dict[str, int],
    ) -> None:
        self.players = players
        self.sessions_of = sessions_of
        self.sdk_process_of = sdk_process_of
        self.player_conn = player_conn
        self.session_conns = session_conns
        self.monitor = monitor
        self.pids = pids

    def window(self, rate: float, seconds: float, *, timeline: bool = False) -> dict[str, Any]:
        """Run one window of changes at ``rate``/s for ``seconds`` and analyse it."""
        for c in self.session_conns:  # start the SDK processes' counts (records, pauses, CPU) here
            c.send("mark")
        for c in self.session_conns:
            _expect(c, "records", 300)
        t0 = time.perf_counter_ns()
        self.player_conn.send(("window", rate, seconds))
        players, volumes, stamps, player_figures = _expect(self.player_conn, "changes", seconds + 300)
        t_sent = stamps[-1] if stamps else t0
        for c in self.session_conns:
            c.send("mark")
        received = [_expect(c, "records", 300) for c in self.session_conns]
        t1 = time.perf_counter_ns()
        window = Window(
            players=players,
            volumes=volumes,
            stamps=stamps,
            received=[r[:4] for r in received],
            sessions_of=self.sessions_of,
            sdk_process_of=self.sdk_process_of,
            player_pauses=player_figures["gc_pauses"],
            sdk_pauses=[r[4]["gc_pauses"] for r in received],
        )
        figures = analyse_window(window, timeline=timeline)
        wall = player_figures["wall_s"]
        cpu = self.monitor.cpu_percent(t0, t_sent)
        figures.update(
            {
                "rate_per_s": rate,
                "seconds": seconds,
                "sent": len(stamps),
                "achieved_rate_per_s": round(len(stamps) / wall) if wall else 0,
                "load_average": self.monitor.load_average(t0, t1),
                "reconcile_passes": self.monitor.reconcile_passes(t0, t1),
                "processes": {
                    "players": {
                        "cpu_percent": round(100 * player_figures["cpu_s"] / wall) if wall else 0,
                        "rss_mb": player_figures["rss_mb"],
                        "offline_agents_at_end": player_figures["offline_agents"],
                        "gc": player_figures["gc"],
                    },
                    "sdk": [
                        {
                            "cpu_percent": cpu.get(f"sdk-{i}", 0.0),
                            "rss_mb": r[4]["rss_mb"],
                            "invalid": r[4]["invalid"],
                            "superseded": r[4]["superseded"],
                            "received": r[4]["received"],
                            "stale": r[4]["stale"],
                            "reconnects": r[4]["reconnects"],
                            "gc": r[4]["gc"],
                        }
                        for i, r in enumerate(received)
                    ],
                    "broker": {"cpu_percent": cpu.get("broker", 0.0), "rss_mb": rss_mb(self.pids["broker"])},
                    "authz": {"cpu_percent": cpu.get("authz", 0.0), "rss_mb": rss_mb(self.pids["authz"])},
                },
            }
        )
        if timeline:
            figures["timeline"]["cpu"] = {
                name: series
                for name, series in self.monitor.cpu_series(t0, t_sent).items()
                if name in {"broker", "authz", "players"}
            }
        return figures


def _rate_sweep(fleet: _Fleet, rates: list[float], seconds: float) -> dict[str, Any]:
    """Windows at rising rates until p99 passes `SATURATION_P99_MS`; the last rate under it is the saturation figure."""
    points = []
    for rate in rates:
        length = min(seconds, 99 * fleet.players / rate * 0.95)  # volumes tell changes apart: < 100 per player
        window = fleet.window(rate, length)
        window.pop("latency_sets", None)
        points.append(window)
        if window["latency"]["p99_ms"] > SATURATION_P99_MS or window["lost"] > 0:
            break
    ok = [p for p in points if p["latency"]["p99_ms"] <= SATURATION_P99_MS and p["lost"] == 0]
    best = max((p["achieved_rate_per_s"] for p in ok), default=0)
    return {
        "points": points,
        "saturation": {
            "highest_rate_with_p99_under_30ms": best,
            "multiple_of_1000": round(best / 1000, 1),
            "first_rate_over": next((p["rate_per_s"] for p in points if p not in ok), None),
        },
    }


def _held_sweep(  # noqa: PLR0913 - the sweep's settings
    fleet: _Fleet, holder: Connection, *, active: int, levels: list[int], rate: float, seconds: float, limit: int
) -> list[dict[str, Any]]:
    """For each level: idle connections up to it, then one window at ``rate``."""
    points = []
    for level in sorted(levels):
        target = min(level, limit - 200)  # the broker needs a few descriptors of its own
        idle = target - active
        if idle < 0:
            continue
        holder.send(("hold", idle))
        held, connect_s, holder_rss = _expect(holder, "held", 1800)
        window = fleet.window(rate, seconds)
        window.pop("latency_sets", None)
        window.update(
            {
                "connections": active + held,
                "requested": level,
                "idle_connections": held,
                "idle_connect_s": connect_s,
                "holder_rss_mb": holder_rss,
            }
        )
        if target < level:
            window["capped_by"] = f"open-file hard limit {limit} per process (no CAP_SYS_RESOURCE here)"
        points.append(window)
    return points


def run(  # noqa: C901, PLR0913, PLR0915 - one orchestration, step by step
    *,
    players: int = 1400,
    sessions: int = 5000,
    rate: float = 1000.0,
    seconds: float = 30.0,
    sdk_processes: int = 2,
    gc: GcPolicy = "frozen",
    rates: list[float] | None = None,
    rate_seconds: float = 10.0,
    held: list[int] | None = None,
    held_seconds: float = 10.0,
    credentials: str = "dynsec",
) -> dict[str, Any]:
    """Run the fleet scenario and return its figures (``credentials``: ``dynsec`` or ``token``)."""
    from amora_devtools._authz_process import make_broker_token_key  # noqa: PLC0415
    from amora_devtools.broker import TokenPlugin, dynsec, start_broker  # noqa: PLC0415
    from amora_devtools.pki import DevPKI  # noqa: PLC0415
    from amora_devtools.stack import start_authz  # noqa: PLC0415

    if rate * seconds / players >= 100:
        raise ValueError("each player may change at most 99 times per window (changes are told apart by volume)")
    limit = raise_fd_limit()
    ctx = mp.get_context("spawn")
    figures: dict[str, Any] = {
        "players": players,
        "sessions": sessions,
        "connections": players + sessions,
        "rate_per_s": rate,
        "seconds": seconds,
        "sdk_processes": sdk_processes,
        "gc_policy": gc,
        "credentials": credentials,
    }
    with tempfile.TemporaryDirectory(prefix="amora-bench-fleet-") as tmp:
        work = Path(tmp)
        pki = DevPKI.create(work / "pki")
        users = [USER_FMT.format(i) for i in range(players)]
        token_key, plugin = None, None
        if credentials == "token":
            token_key, public = make_broker_token_key(work / "broker-token")
            plugin = TokenPlugin(public_keys=public)
        with start_broker(work / "brokers", pki, token_plugin=plugin) as broker:
            authz, url = start_authz(
                work / "authz", pki, [broker], users=[*users, "admin"], rate_limits=False, broker_token_key=token_key
            )
            children: list[Any] = _CHILDREN
            children.clear()
            monitor: Monitor | None = None
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
                    "gc": gc,
                }
                player_proc = ctx.Process(target=player_main, args=(child_conn, player_spec), name="fleet-players")
                player_proc.start()
                children.append(player_proc)
                _expect(player_conn, "ready", SETUP_TIMEOUT_S)
                figures["setup_players_online_s"] = round(time.perf_counter() - t, 1)

                t = time.perf_counter()
                sessions_of: dict[int, list[int]] = {}
                sdk_process_of: dict[int, int] = {}
                per_process: list[list[tuple[int, str]]] = [[] for _ in range(sdk_processes)]
                for s in range(sessions):
                    sessions_of.setdefault(s % players, []).append(s)
                    p = (s // players) % sdk_processes
                    sdk_process_of[s] = p
                    per_process[p].append((s, USER_FMT.format(s % players)))
                session_conns = []
                pids: dict[str, int] = {"broker": broker.pid, "authz": authz.pid, "players": int(player_proc.pid or 0)}
                for p in range(sdk_processes):
                    parent, child = ctx.Pipe()
                    spec = {"authz_url": url, "ca_file": str(pki.ca_file), "users": per_process[p], "gc": gc}
                    proc = ctx.Process(target=sessions_main, args=(child, spec), name=f"fleet-sdk-{p}")
                    proc.start()
                    children.append(proc)
                    session_conns.append(parent)
                    pids[f"sdk-{p}"] = int(proc.pid or 0)
                ready = [_expect(c, "ready", SETUP_TIMEOUT_S) for c in session_conns]
                figures["setup_sessions_s"] = round(time.perf_counter() - t, 1)
                figures["sessions_per_sdk_process"] = [r[0] for r in ready]
                figures["setup_exchange_retries"] = sum(r[2] for r in ready)
                figures["broker_rss_mb_idle"] = rss_mb(broker.pid)

                monitor = Monitor(pids, authz_url=url)
                monitor.start()
                fleet = _Fleet(
                    players=players,
                    sessions_of=sessions_of,
                    sdk_process_of=sdk_process_of,
                    player_conn=player_conn,
                    session_conns=session_conns,
                    monitor=monitor,
                    pids=pids,
                )
                figures.update(fleet.window(rate, seconds, timeline=True))
                if rates:
                    figures["rate_sweep"] = _rate_sweep(fleet, rates, rate_seconds)
                if held:
                    dynsec(broker, [{"command": "createClient", "username": _IDLE_USER, "password": _IDLE_PASSWORD}])
                    holder_conn, holder_child = ctx.Pipe()
                    holder_spec = {
                        "host": broker.host,
                        "port": broker.app_port,
                        "ca_file": str(pki.ca_file),
                        "username": _IDLE_USER,
                        "password": _IDLE_PASSWORD,
                    }
                    holder = ctx.Process(target=holder_main, args=(holder_child, holder_spec), name="fleet-idle")
                    holder.start()
                    children.append(holder)
                    _expect(holder_conn, "ready", 60)
                    figures["held_sweep"] = _held_sweep(
                        fleet,
                        holder_conn,
                        active=players + sessions,
                        levels=held,
                        rate=rate,
                        seconds=held_seconds,
                        limit=limit,
                    )
                    holder_conn.send(("stop",))
                for c in session_conns:
                    c.send("stop")
                figures["sdk_after"] = [_expect(c, "stopped", 300)[0] for c in session_conns]
                figures["sdk_full_collection"] = [a["full_collection"] for a in figures["sdk_after"]]
                player_conn.send(("stop",))
                for proc in children:
                    proc.join(60)
            finally:
                if monitor is not None:
                    monitor.stop()
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
    parser.add_argument(
        "--gc", choices=["enabled", "frozen", "off"], default="frozen", help="the load generators' collector"
    )
    parser.add_argument("--rates", help="comma-separated rates for the saturation sweep (changes/s)")
    parser.add_argument("--held", help="comma-separated connection levels for the held-connection sweep")
    parser.add_argument("--sweep-seconds", type=float, default=10.0, help="length of each sweep window")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--credentials", choices=["dynsec", "token"], default="dynsec", help="how the sessions log in to the broker"
    )
    args = parser.parse_args(argv)
    figures = run(
        players=args.players,
        sessions=args.sessions,
        rate=args.rate,
        seconds=args.seconds,
        sdk_processes=args.sdk_processes,
        gc=args.gc,
        rates=[float(r) for r in args.rates.split(",")] if args.rates else None,
        rate_seconds=args.sweep_seconds,
        held=[int(n) for n in args.held.split(",")] if args.held else None,
        held_seconds=args.sweep_seconds,
        credentials=args.credentials,
    )
    text = json.dumps(figures, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    figures.pop("latency_sets", None)
    figures.pop("timeline", None)
    sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
