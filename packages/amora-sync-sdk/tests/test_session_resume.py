"""Resuming a stored session across restarts, with the real authz service and broker.

A restart resumes the stored session without logging in (nothing is written to the
broker); a stored session that was logged out, has expired, was changed, is readable by
others or belongs to another user is refused with the reason, and the client logs in afresh.
"""

import asyncio
import json
import stat
from pathlib import Path

import httpx
import pytest

from amora_devtools import start_postgres
from amora_protocol import now_ms
from amora_sync import CommandStatus, DeviceState, FileSessionStore, Pause

pytestmark = pytest.mark.services

WAIT = 15.0


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory):
    with start_postgres(tmp_path_factory.mktemp("pg")) as postgres:
        yield postgres.dsn


async def next_state(events, *, version: int) -> DeviceState:
    async with asyncio.timeout(WAIT):
        async for event in events:
            if isinstance(event, DeviceState) and event.version >= version:
                return event
    raise AssertionError("the watch ended")


async def start_and_keep(real_stack, store: Path) -> str:
    """Open a client with a session store, close it without logging out; return its session id."""
    async with real_stack.client("alice", session_store=store) as client:
        assert not client.resumed
        return str(client.session_id)


@pytest.mark.parametrize("real_stack", [{}, {"database_url": "postgresql"}], ids=["sqlite", "postgres"], indirect=True)
async def test_a_restart_resumes_the_session_and_writes_nothing_to_the_broker(real_stack, tmp_path):
    device = real_stack.devices["player-1"]
    await device.connect(real_stack.broker)
    store = tmp_path / "app" / "session.json"
    first_id = await start_and_keep(real_stack, store)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    state = device.publish_state()
    before = real_stack.broker.dynsec_file.stat().st_mtime_ns
    client = real_stack.client("alice", session_store=store, refresh_margin=0.9995)
    async with client, client.watch() as events:
        assert client.resumed
        assert client.session_id == first_id
        assert client.stats.session_exchanges == 0
        assert await next_state(events, version=state.version) == state
        # The stored grant is the service's own: the device executes under it.
        assert (await client.command("player-1", Pause())).status is CommandStatus.SUCCEEDED
        # Connecting with the stored credential changed nothing in the broker's accounts.
        assert real_stack.broker.dynsec_file.stat().st_mtime_ns == before
        # The resumed session is refreshed in the background (here within a second: 600 s
        # sessions refreshed at 99.95 % of their life left); the database row is extended.
        sessions = client.session_changes()
        resumed = await anext(sessions)
        async with asyncio.timeout(WAIT):
            refreshed = await anext(sessions)
        assert refreshed.session_id == first_id
        assert refreshed.expires_at_ms > resumed.expires_at_ms
        assert refreshed.grant != resumed.grant
    assert store.exists()  # closing keeps it for the next start


async def test_a_logged_out_stored_session_is_refused_and_replaced(real_stack, tmp_path):
    await real_stack.devices["player-1"].connect(real_stack.broker)
    store = tmp_path / "session.json"
    old = await start_and_keep(real_stack, store)
    token = await real_stack.token("alice")
    async with httpx.AsyncClient(base_url=real_stack.url, timeout=10) as http:
        gone = await http.delete(f"/v1/sessions/{old}", headers={"Authorization": f"Bearer {token}"})
    assert gone.status_code == 204
    async with real_stack.client("alice", session_store=store) as client:
        assert client.session_id != old
        assert not client.resumed
        assert "broker refused the stored session's credential" in (client.resume_error or "")
        assert client.stats.session_resume_failures == 1
        assert client.stats.session_exchanges == 1
        assert (await client.command("player-1", Pause())).status is CommandStatus.SUCCEEDED
        new = client.session_id
    assert json.loads(json.loads(store.read_bytes())["session"])["session_id"] == new


@pytest.mark.parametrize("real_stack", [{"session_ttl_s": 31}], indirect=True)
async def test_an_expired_stored_session_is_not_resumed(real_stack, tmp_path, monkeypatch):
    store = tmp_path / "session.json"
    old = await start_and_keep(real_stack, store)
    # The SDK's clock moves 2 s on instead of the test waiting: the 31 s session is then within
    # the SDK's 30 s margin of its end (the authz service keeps its own, real clock).
    monkeypatch.setattr("amora_sync._session_keeper.now_ms", lambda: now_ms() + 2_000)
    async with real_stack.client("alice", session_store=store) as client:
        assert client.session_id != old
        assert client.resume_error == "the stored session cannot be resumed: it has expired"


async def test_a_changed_stored_session_is_detected(real_stack, tmp_path):
    store = tmp_path / "session.json"
    old = await start_and_keep(real_stack, store)
    record = json.loads(store.read_bytes())
    session = json.loads(record["session"])
    # Someone swaps the device's key for their own: the app would trust forged states.
    session["devices"][0]["signing_key"] = "A" * 43 + "="
    record["session"] = json.dumps(session)
    FileSessionStore(store).save(json.dumps(record).encode())
    async with real_stack.client("alice", session_store=store) as client:
        assert client.session_id != old
        assert "integrity check failed" in (client.resume_error or "")
        assert client.devices[0].signing_key == real_stack.devices["player-1"].signing_key.public_key


async def test_a_stored_session_readable_by_others_is_refused(real_stack, tmp_path):
    store = tmp_path / "session.json"
    old = await start_and_keep(real_stack, store)
    store.chmod(0o644)
    async with real_stack.client("alice", session_store=store) as client:
        assert client.session_id != old
        assert "chmod 600" in (client.resume_error or "")
    assert stat.S_IMODE(store.stat().st_mode) == 0o600  # the new session was stored privately


async def test_another_users_stored_session_is_not_resumed(real_stack, tmp_path):
    store = tmp_path / "session.json"
    await start_and_keep(real_stack, store)
    async with real_stack.client("bob", session_store=store) as client:
        assert not client.resumed
        assert "belongs to user 'alice'" in (client.resume_error or "")
        assert client.devices == ()


async def test_logging_out_forgets_the_stored_session(real_stack, tmp_path):
    store = tmp_path / "session.json"
    async with real_stack.client("alice", session_store=store) as client:
        await client.aclose(logout=True)
    assert not store.exists()
