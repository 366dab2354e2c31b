"""The example analytics backend on the real stack: a replica killed mid-stream loses nothing (issue #13).

Two `amora-analytics` processes (replicas 1 and 2 of one backend) consume the fleet's states
into a real PostgreSQL while registered devices publish numbered states. Replica 2 is killed
with SIGKILL (by its PID) once it has stored some, while publishing goes on; replica 1 takes
its broker session over (everything queued and unacknowledged in it) and every version of
every device ends up in the database, each exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from amora_devtools.fakedevice import FakeDevice
from amora_devtools.stack import Stack
from amora_protocol import BackendRole

pytestmark = pytest.mark.services

WAIT_S = 30.0
ROUNDS = 80  # states per device
DEVICES = 3


class Replica:
    """One `amora-analytics` process and the JSON lines it printed (``--progress``)."""

    def __init__(self, process: asyncio.subprocess.Process, number: int) -> None:
        self.process = process
        self.number = number
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Condition()
        self.reader = asyncio.create_task(self._read(), name=f"replica-{number}-stdout")

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            async with self.changed:
                self.events.append(json.loads(line))
                self.changed.notify_all()

    async def wait_for(self, predicate: Any) -> None:
        async with asyncio.timeout(WAIT_S), self.changed:
            await self.changed.wait_for(lambda: predicate(self))

    def states(self, *, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events[since:] if e["event"] == "state"]


@contextlib.asynccontextmanager
async def _replica(number: int, *, stack: Stack, credentials: Path, database_url: str) -> AsyncIterator[Replica]:
    assert stack.pki is not None
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "amora_analytics",
        "--authz-url",
        stack.authz_url,
        "--credentials",
        str(credentials),
        "--ca-file",
        str(stack.pki.ca_file),
        "--replica",
        str(number),
        "--database-url",
        database_url,
        "--takeover-delay",
        "1",
        "--progress",
        stdout=asyncio.subprocess.PIPE,
    )
    replica = Replica(process, number)
    try:
        yield replica
    finally:
        if process.returncode is None:
            process.kill()  # this test's own process, by its PID
        await process.wait()
        replica.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await replica.reader


async def test_a_killed_replica_is_taken_over_and_no_state_version_is_lost(
    security_stack: Stack, authz_http: Any, fake_device: Any, postgres_dsn: str, tmp_path: Path
) -> None:
    stack = security_stack
    assert stack.pki is not None
    name = f"analytics-{secrets.token_hex(3)}"
    with authz_http(stack, "admin") as http:
        created = http.post("/v1/admin/backends", json={"name": name, "role": BackendRole.ANALYTICS, "replicas": 2})
        assert created.status_code == 201, created.text
    credentials = tmp_path / "credentials.json"
    credentials.touch(mode=0o600)
    credentials.write_text(created.text)
    devices: list[FakeDevice] = [fake_device(stack, "analytics") for _ in range(DEVICES)]
    ours = {d.device_id for d in devices}
    try:
        async with (
            _replica(1, stack=stack, credentials=credentials, database_url=postgres_dsn) as first,
            _replica(2, stack=stack, credentials=credentials, database_url=postgres_dsn) as second,
        ):
            for replica in (first, second):
                await replica.wait_for(lambda r: any(e["event"] == "ready" for e in r.events))
            async with contextlib.AsyncExitStack() as connected:
                for device in devices:
                    await connected.enter_async_context(device)

                async def publish() -> None:
                    for round_ in range(ROUNDS):
                        for device in devices:
                            await device.publish_state(playing=round_ % 3 != 2, elapsed_ms=round_ * 1000)
                        await asyncio.sleep(0.02)  # a steady stream, not a burst
                    for device in devices:
                        await device.drained()

                publisher = asyncio.create_task(publish(), name="devices-publish")
                # Mid-stream: replica 2 has stored some of our live states; kill it (SIGKILL, its PID).
                await second.wait_for(lambda r: len([e for e in r.states() if e["device_id"] in ours]) >= 5)
                assert not publisher.done()
                killed_at = len(first.events)
                os.kill(second.process.pid, 9)
                await second.process.wait()
                await publisher

                def complete(r: Replica) -> bool:
                    seen = {(e["device_id"], e["version"]) for e in r.states() + second.states()}
                    return all((d.device_id, v) in seen for d in devices for v in range(1, ROUNDS + 1))

                await first.wait_for(complete)
            # Replica 1 took slot 2's session over after the kill and stored through it.
            assert [e for e in first.states(since=killed_at) if e["slot"] == 2]
        import psycopg

        async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
            for device in devices:
                cursor = await conn.execute(
                    "SELECT version FROM device_states WHERE device_id = %s ORDER BY version", (device.device_id,)
                )
                versions = [row[0] for row in await cursor.fetchall()]
                assert versions == list(range(1, ROUNDS + 1)), device.device_id
            cursor = await conn.execute(
                "SELECT plays, listening_ms FROM device_stats WHERE device_id = %s", (devices[0].device_id,)
            )
            plays, listening = (await cursor.fetchall())[0]
            # Each fake state names a new song, so every playing state is a new play.
            assert plays == sum(1 for round_ in range(ROUNDS) if round_ % 3 != 2)
            assert listening > 0
    finally:
        with authz_http(stack, "admin") as http:
            http.delete(f"/v1/admin/backends/{name}")
