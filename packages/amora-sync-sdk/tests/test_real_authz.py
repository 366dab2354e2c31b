"""The SDK with the real amora-authz-service: token exchange, grants the device checks, refresh, logout."""

import asyncio
import json
import os
import sys

import httpx
import pytest
from sdk_waits import next_state

from amora_devtools.stack import dev_mode_fields
from amora_sync import CommandStatus, ConnectionState, Pause, RateLimitedError, UnknownDeviceError

pytestmark = pytest.mark.services

WAIT = 15.0


async def test_session_from_the_real_service_watches_and_commands(real_stack):
    device = real_stack.devices["player-1"]
    await device.connect(real_stack.broker)
    first = device.publish_state()
    async with real_stack.client("alice") as client, client.watch() as events:
        assert [d.device_id for d in client.devices] == ["player-1"]
        assert await next_state(events, version=first.version, device_id="player-1") == first
        # The device verifies the real service's grant before it executes anything.
        response = await client.command("player-1", Pause())
        assert response.status is CommandStatus.SUCCEEDED
        assert device.commands[-1].action == Pause()
        second = device.publish_state()
        assert await next_state(events, version=second.version, device_id="player-1") == second
        assert client.stats.invalid == 0


async def test_a_user_without_the_device_cannot_use_it(real_stack):
    async with real_stack.client("bob") as client:
        assert client.devices == ()
        with pytest.raises(UnknownDeviceError):
            await client.command("player-1", Pause())


async def test_logout_elsewhere_is_survived_with_a_new_session(real_stack):
    device = real_stack.devices["player-1"]
    await device.connect(real_stack.broker)
    async with real_stack.client("alice") as client, client.watch("player-1") as events:
        first = device.publish_state()
        await next_state(events, version=first.version, device_id="player-1")
        old = client.session_id
        token = await real_stack.token("alice")
        async with httpx.AsyncClient(base_url=real_stack.url, timeout=10) as http:
            gone = await http.delete(f"/v1/sessions/{old}", headers={"Authorization": f"Bearer {token}"})
        assert gone.status_code == 204  # the service removes the credential and kicks the connection
        async with asyncio.timeout(WAIT):
            async for info in client.connection_changes():
                if info.state is ConnectionState.CONNECTED and client.session_id != old:
                    break
        second = device.publish_state()
        assert await next_state(events, version=second.version, device_id="player-1") == second
        assert (await client.command("player-1", Pause())).status is CommandStatus.SUCCEEDED


async def test_session_refresh_with_the_real_service_keeps_the_connection(real_stack):
    device = real_stack.devices["player-1"]
    await device.connect(real_stack.broker)
    async with real_stack.client("alice", refresh_margin=0.9995) as client:
        # 600 s sessions, refreshed when 99.95 % of their life is left: within a second.
        sessions = client.session_changes()
        first = await anext(sessions)
        async with asyncio.timeout(WAIT):
            refreshed = await anext(sessions)
        assert refreshed.session_id == first.session_id
        assert refreshed.expires_at_ms > first.expires_at_ms
        assert refreshed.grant != first.grant
        assert client.stats.connects == 1
        response = await client.command("player-1", Pause())  # signed under the new grant
        assert response.status is CommandStatus.SUCCEEDED


async def test_a_device_linked_mid_session_joins_the_watch(real_stack):
    async with real_stack.client("alice") as client, client.watch() as events:
        assert [d.device_id for d in client.devices] == ["player-1"]
        # Linking changes alice's broker group: the broker drops her connection; the SDK
        # reconnects, refreshes the session and subscribes to the new device.
        device = await real_stack.add_device("player-2", link_to="alice")
        await device.connect(real_stack.broker)
        async with asyncio.timeout(WAIT):
            async for session in client.session_changes():
                if "player-2" in session.devices:
                    break
        state = device.publish_state()
        assert await next_state(events, version=state.version, device_id="player-2") == state
        assert (await client.command("player-2", Pause())).status is CommandStatus.SUCCEEDED


async def test_cli_in_development_mode_with_the_harness_stack_file(real_stack, tmp_path):
    device = real_stack.devices["player-1"]
    await device.connect(real_stack.broker)
    state = device.publish_state()
    stack_file = tmp_path / "stack.json"
    # The fields stack:up writes for development mode, by the harness's own function.
    stack_file.write_text(json.dumps(dev_mode_fields(authz_url=real_stack.url, ca_file=real_stack.pki.ca_file)))
    env = {**os.environ, "AMORA_CONFIG": "/nonexistent"}
    for var in ("AMORA_AUTHZ_URL", "AMORA_TOKEN", "AMORA_CA_FILE", "AMORA_DEV_STACK", "AMORA_DEV_USER"):
        env.pop(var, None)
    base = [sys.executable, "-m", "amora_sync._cli", "--dev", str(stack_file), "--user", "alice"]

    async def amora(*argv: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *base, *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await amora("devices", "--json")
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["device_id"] == "player-1"
    assert row["state"]["version"] == state.version
    code, out, err = await amora("send", "player-1", "seek", "0:42")
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"
    assert device.commands[-1].action.position_ms == 42_000
    # The deprecated name still works, and says so.
    base[3] = "--stack"
    code, out, err = await amora("devices", "--json")
    assert code == 0, err
    assert "--stack is deprecated: use --dev" in err
    # A user the development issuer does not know: no session (exit 3), the reason named.
    base[3:7] = ["--dev", str(stack_file), "--user", "mallory"]
    code, _, err = await amora("devices")
    assert code == 3
    assert "development issuer refused user 'mallory'" in err


# One session per user every 2 s, one at once: the second login of a user gets 429 + Retry-After.
SLOW_SESSIONS = {"rate_limits": {"sessions_per_user": {"rate_per_s": 0.5, "burst": 1}}}


@pytest.mark.parametrize("real_stack", [SLOW_SESSIONS], indirect=True)
async def test_the_real_services_rate_limit_is_waited_out_as_retry_after_says(real_stack):
    async with real_stack.client("alice") as first, real_stack.client("alice") as second:
        assert first.connected
        assert second.connected
        assert first.stats.rate_limit_waits == 0
        assert second.stats.rate_limit_waits >= 1  # refused with 429, waited, then admitted
        assert first.session_id != second.session_id


@pytest.mark.parametrize("real_stack", [SLOW_SESSIONS], indirect=True)
async def test_the_real_services_rate_limit_beyond_the_clients_patience_is_a_clear_error(real_stack):
    async with real_stack.client("alice"):
        with pytest.raises(RateLimitedError) as caught:
            async with real_stack.client("alice", rate_limit_wait=0.5):
                pass
    assert caught.value.code == "rate_limited"
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1
    assert "rate_limit_wait" in str(caught.value)
