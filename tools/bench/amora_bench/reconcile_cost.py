"""The authz service's periodic reconcile at N sessions: a full pass and the cheap check, with the broker's stall.

The service's `BrokerFleet` runs in this process against a broker whose file already holds
exactly what the database asks for (written before it starts); a probe in its own process
publishes to itself every millisecond and reports the longest round trip of each window,
which is the broker's longest stall meanwhile (``docs/decisions/0013-logins-resume-and-reconcile-cost.md``).
Part of the ``logins`` scenario (`amora_bench.logins`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_bench._common import broker_for_bench, latency_summary
from amora_bench._dynsec_files import group, preload, session_account
from amora_bench._rawmqtt import RawMqtt

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

    from amora_devtools.broker import BrokerProcess

__all__ = ["reconcile_cost"]

PROBE_TOPIC = "amora/harness/bench-probe"


def _probe_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Child process: publish to itself back to back; report the longest round trip per window."""
    asyncio.run(_probe(conn, spec))


async def _probe(conn: Connection, spec: dict[str, Any]) -> None:
    from amora_devtools._mqtt import client_ssl_context  # noqa: PLC0415

    link = await RawMqtt.connect(
        spec["host"],
        spec["port"],
        ssl_context=client_ssl_context(Path(spec["ca_file"])),
        client_id=f"bench-probe-{os.getpid()}",
        username=spec["username"],
        password=spec["password"],
    )
    await link.subscribe(PROBE_TOPIC)
    conn.send("ready")
    longest = 0.0
    loop = asyncio.get_running_loop()
    while True:
        if await loop.run_in_executor(None, conn.poll, 0):
            message = conn.recv()
            if message == "stop":
                break
            conn.send(round(longest * 1000, 1))  # "mark": report and restart the window
            longest = 0.0
        began = time.perf_counter()
        link.publish(PROBE_TOPIC, b"p")
        await link.next_payload()
        longest = max(longest, time.perf_counter() - began)
        await asyncio.sleep(0.001)
    link.close()


async def _reconcile_at(
    broker: BrokerProcess, sessions: int, folder: Path, probe: Connection, start_probe: Callable[[], None]
) -> dict[str, Any]:
    import structlog  # noqa: PLC0415

    from amora_authz._fleet import BrokerFleet  # noqa: PLC0415
    from amora_authz._service import session_password  # noqa: PLC0415
    from amora_authz._store import Session, open_store  # noqa: PLC0415
    from amora_authz.testing import broker_endpoint  # noqa: PLC0415

    store = await open_store(f"sqlite://{folder / f'authz-{sessions}.db'}")
    await store.migrate()
    now = int(time.time() * 1000)
    for i in range(sessions):
        await store.add_session(
            Session(
                session_id=f"sess.{i:032x}",
                user_sub=f"user{i % 2000}",
                client_name=None,
                signing_key=bytes(32),
                encryption_key=bytes(32),
                created_at_ms=now,
                expires_at_ms=now + 3_600_000,
            )
        )
    secret = secrets.token_bytes(32)
    fleet = BrokerFleet(
        [broker_endpoint(broker)],
        store,
        password_for=functools.partial(session_password, secret),
        logger=structlog.get_logger("bench"),
    )
    desired = await fleet.desired()
    accounts = [c for c in desired.clients.values() if c.username.startswith("sess.")]
    members: dict[str, list[str]] = {}
    for account in accounts:
        for name in account.groups:
            members.setdefault(name, []).append(account.username)
    preload(
        broker,
        clients=[session_account(c.username, c.password or "") for c in accounts],
        groups=[group(g.name, members.get(g.name, ())) for g in desired.groups.values()],
    )
    start_probe()
    first = await fleet.reconcile_all()  # creates the few service objects the file lacks

    def measured() -> float:
        probe.send("mark")
        return float(probe.recv())

    measured()
    began = time.perf_counter()
    commands = await fleet.reconcile_all()
    full_s = time.perf_counter() - began
    full_stall = measured()
    checks: list[float] = []
    stalls: list[float] = []
    for _ in range(5):
        began = time.perf_counter()
        reports = await fleet.check_all()
        checks.append((time.perf_counter() - began) * 1000)
        stalls.append(measured())
        if any(r.full for r in reports):
            msg = f"the cheap check ran a full pass in steady state: {reports}"
            raise RuntimeError(msg)
    await fleet.close()
    await store.close()
    return {
        "sessions": sessions,
        "setup_commands": sum(first.values()),
        "full_pass_ms": round(full_s * 1000, 1),
        "full_pass_commands": sum(commands.values()),
        "full_pass_broker_longest_stall_ms": full_stall,
        "check_ms": latency_summary(checks),
        "check_broker_longest_stall_ms": max(stalls),
        "ratio_check_vs_full": round(max(checks) / (full_s * 1000), 4),
    }


def reconcile_cost(*, sessions: list[int] | None = None) -> dict[str, Any]:
    """The periodic pass's cost at each number of sessions (see the module doc)."""
    results = []
    for count in sessions or [5000, 10_000]:
        with broker_for_bench() as broker, tempfile.TemporaryDirectory(prefix="amora-bench-reconcile-") as tmp:
            parent, child = multiprocessing.Pipe()
            spec = {
                "host": broker.host,
                "port": broker.app_port,
                "ca_file": str(broker.ca_file),
                "username": broker.admin_username,
                "password": broker.admin_password,
            }
            process = multiprocessing.get_context("spawn").Process(target=_probe_main, args=(child, spec), daemon=True)

            def start_probe(
                process: multiprocessing.process.BaseProcess = process, parent: Connection = parent
            ) -> None:
                # Once the broker holds its final file: the preload restarts it.
                process.start()
                if not parent.poll(30) or parent.recv() != "ready":
                    msg = "the stall probe did not start"
                    raise RuntimeError(msg)

            try:
                results.append(asyncio.run(_reconcile_at(broker, count, Path(tmp), parent, start_probe)))
            finally:
                if process.is_alive():
                    with contextlib.suppress(OSError, BrokenPipeError):
                        parent.send("stop")
                    process.join(10)
                if process.is_alive():
                    process.kill()
    return {"points": results}
