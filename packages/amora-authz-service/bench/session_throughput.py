# ruff: noqa: INP001, T201 - a stand-alone script that prints its results
"""Measure session creations per second with concurrent clients (loopback only).

The service runs in its own process (``amora-authz serve`` on a generated
configuration, so its event loop does not share a CPU slice with the clients), on
SQLite or on the harness's PostgreSQL, with or without a real mosquitto to reconcile.
``--clients`` client tasks, each logged in as its own development user, create
sessions back to back (``POST /v1/sessions``) for ``--seconds`` after a short warm-up;
the figure is successful creations per second, with the latency percentiles of each
request.

``--credentials token`` runs the service in token mode (``[broker] credentials = "token"``,
a key made with ``amora-authz broker-token-key``): a creation signs a broker token and writes
nothing to the broker, which then loads the ``amora_auth`` plugin with the key's public half.
``--live N`` first stores N other live sessions in the database (token mode, or no broker: in
dynsec mode each would first have to become a broker client), to show what a creation costs
beside them.

Usage: python packages/amora-authz-service/bench/session_throughput.py
       [--db sqlite|postgres] [--broker] [--credentials dynsec|token] [--live 0]
       [--clients 8] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from amora_authz._store import Session, open_store
from amora_authz.testing import session_body
from amora_devtools import DevPKI, start_broker, start_postgres
from amora_devtools._authz_process import make_broker_token_key

WARMUP_S = 1.0


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def free_port() -> int:
    """A free loopback port (the service binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(
    folder: Path, *, database_url: str, users: list[str], broker_toml: str, token_key: Path | None
) -> tuple[Path, str]:
    """Write the service's TOML configuration; return its path and base URL."""
    port = free_port()
    user_list = ", ".join(f'"{u}"' for u in users)
    text = f"""
database_url = "{database_url}"
listen_host = "127.0.0.1"
listen_port = {port}
state_dir = "{folder / "state"}"
log_level = "error"
max_sessions_per_user = 1000000
reconcile_interval_s = 3600
expiry_check_interval_s = 3600

[rate_limits]
enabled = false  # this measures the service, not its limits

[dev_issuer]
enabled = true
users = [{user_list}]
{broker_toml}
"""
    if token_key is not None:
        text += f'\n[broker]\ncredentials = "token"\ntoken_key_file = "{token_key}"\n'

    path = folder / "authz.toml"
    path.write_text(text)
    return path, f"http://127.0.0.1:{port}"


async def wait_ready(http: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    """Wait until the service answers ``/healthz`` (bounded)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if (await http.get("/healthz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise SystemExit("the service did not answer within 60 s")


async def client_loop(http: httpx.AsyncClient, token: str, stop_at: float, record_from: float, out: list[float]) -> int:
    """Create sessions until ``stop_at``; return how many succeeded after ``record_from``."""
    headers = {"Authorization": f"Bearer {token}"}
    done = 0
    while (now := time.perf_counter()) < stop_at:
        response = await http.post("/v1/sessions", json=session_body(), headers=headers)
        if response.status_code != 201:
            raise SystemExit(f"POST /v1/sessions answered {response.status_code}: {response.text}")
        if now >= record_from:
            done += 1
            out.append((time.perf_counter() - now) * 1000)
    return done


async def measure(base_url: str, process: subprocess.Popen[bytes], clients: int, seconds: float) -> None:
    """Run the clients against a started service and print the figures."""
    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
        await wait_ready(http, process)
        tokens = []
        for i in range(clients):
            response = await http.post("/dev-issuer/token", json={"username": f"user{i}"})
            response.raise_for_status()
            tokens.append(str(response.json()["access_token"]))
        latencies: list[float] = []
        start = time.perf_counter()
        record_from = start + WARMUP_S
        stop_at = record_from + seconds
        counts = await asyncio.gather(*(client_loop(http, t, stop_at, record_from, latencies) for t in tokens))
        total = sum(counts)
        print(
            f"{clients} clients, {seconds:.0f} s: {total} sessions, {total / seconds:.1f} creations/s; "
            f"latency p50={statistics.median(latencies):.1f} ms p90={percentile(latencies, 0.9):.1f} ms "
            f"p99={percentile(latencies, 0.99):.1f} ms"
        )


async def store_live_sessions(database_url: str, count: int) -> None:
    """Put ``count`` live sessions of 500 other users into the database (migrating it first)."""
    async with await open_store(database_url) as store:
        await store.migrate()
        now = int(time.time() * 1000)
        for n in range(count):
            await store.add_session(
                Session(
                    session_id=f"sess.live{n:08d}",
                    user_sub=f"live{n % 500}",
                    client_name=None,
                    signing_key=bytes(32),
                    encryption_key=bytes(32),
                    created_at_ms=now,
                    expires_at_ms=now + 3_600_000,
                )
            )


def run(args: argparse.Namespace) -> None:
    """Start what the run needs, run it, stop everything."""
    users = [f"user{i}" for i in range(args.clients)]
    with tempfile.TemporaryDirectory(prefix="authz-throughput-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        database_url = f"sqlite://{folder / 'authz.db'}"
        if args.db == "postgres":
            postgres = stack.enter_context(start_postgres(folder / "pg"))
            database_url = postgres.dsn
        broker_toml = ""
        token_key = public_key = None
        if args.credentials == "token":
            token_key, public_key = make_broker_token_key(folder / "token-key")
        if args.broker:
            pki = DevPKI.create(folder / "pki")
            if public_key is None:
                broker = stack.enter_context(start_broker(folder / "broker", pki))
            else:
                from amora_devtools.broker import TokenPlugin  # noqa: PLC0415 - token mode only

                plugin = TokenPlugin(public_keys=public_key)
                broker = stack.enter_context(start_broker(folder / "broker", pki, token_plugin=plugin))
            broker_toml = f"""
[[brokers]]
name = "{broker.name}"
host = "{broker.host}"
port = {broker.app_port}
username = "{broker.admin_username}"
password = "{broker.admin_password}"
ca_file = "{broker.ca_file}"
"""
        if args.live:
            asyncio.run(store_live_sessions(database_url, args.live))
        config, base_url = write_config(
            folder, database_url=database_url, users=users, broker_toml=broker_toml, token_key=token_key
        )
        command = shutil.which("amora-authz") or sys.executable
        argv = [command, "--config", str(config), "serve"]
        if command == sys.executable:
            argv = [sys.executable, "-m", "amora_authz._cli", "--config", str(config), "serve"]
        env = {**os.environ, "AMORA_AUTHZ_LOG_JSON": "false"}
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        try:
            broker_name = "mosquitto" if args.broker else "none"
            print(
                f"store: {args.db}, broker: {broker_name}, credentials: {args.credentials}, live sessions: {args.live}"
            )
            asyncio.run(measure(base_url, process, args.clients, args.seconds))
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--broker", action="store_true", help="reconcile a real mosquitto on every creation")
    parser.add_argument(
        "--credentials",
        choices=("dynsec", "token"),
        default="dynsec",
        help="dynsec: a broker client per session; token: a broker token (the broker loads the amora_auth plugin)",
    )
    parser.add_argument("--live", type=int, default=0, help="other live sessions stored first")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.live and args.broker and args.credentials == "dynsec":
        parser.error(
            "--live with --broker needs --credentials token: in dynsec mode the service's start-up pass "
            "would first create every live session as a broker client (minutes at 10,000)"
        )
    run(args)


if __name__ == "__main__":
    main()
