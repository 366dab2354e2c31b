"""Captured commands replayed, and the failures the system must ride out."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import msgspec
import pytest

from amora_devtools.stack import Stack
from amora_protocol import (
    Codec,
    CommandResponse,
    CommandStatus,
    PlaybackStatus,
    commands_topic,
    parse_envelope,
    responses_topic,
)
from amora_sync import AmoraClient, ChangeVolume, ConnectionState, ConnectionStatus, DeviceState, Play, SetVolume

WAIT_S = 20.0


async def _wait_state(client: AmoraClient, device: str, predicate, limit: float = WAIT_S) -> DeviceState:
    """Wait (bounded) until the client's snapshot of ``device`` satisfies ``predicate``."""
    async with asyncio.timeout(limit), client.watch(device, include_connection=False) as events:
        state = client.state(device)
        while state is None or not predicate(state):
            event = await anext(events)
            if isinstance(event, DeviceState):
                state = event
        return state


async def test_captured_command_replayed_has_no_second_effect(stack: Stack, sdk_client, new_session, mqtt_probe):
    assert stack.pki is not None
    broker = stack.brokers[0]
    device = "player-2"
    other = new_session(stack, "alice")["broker"]  # an attacker with alice's broker access
    with (
        broker.admin_client() as admin,
        mqtt_probe(broker.app_port, stack.pki.ca_file, session=other) as replayer,
    ):
        admin.subscribe(commands_topic(device))
        assert replayer.subscribe(responses_topic(device))[0] < 0x80
        async with sdk_client(stack, "alice") as client:
            await client.command(device, SetVolume(volume=40), timeout=WAIT_S)
            await _wait_state(client, device, lambda s: s.volume == 40)
            response = await client.command(device, ChangeVolume(delta=10), timeout=WAIT_S)
            assert response.status is CommandStatus.SUCCEEDED
            state = await _wait_state(client, device, lambda s: s.volume == 50)
            captured = None
            while (message := admin.receive(timeout=5.0)) is not None:
                if not message.payload:  # the authz service clearing retained commands
                    continue
                env = parse_envelope(message.payload, content_type=message.content_type)
                if env.header.exp_ms and b"change_volume" in message.payload:
                    captured = message
                    break
            assert captured is not None, "the change_volume command was not seen on the wire"
            command_id = response.command_id
            # Replay the exact bytes through another connection.
            replayer.publish(
                captured.topic, captured.payload, content_type=captured.content_type or Codec.MSGPACK.value
            )

            def duplicate_answer(m) -> bool:
                if m.topic != responses_topic(device):
                    return False
                env = parse_envelope(m.payload)
                answer = msgspec.msgpack.decode(env.body, type=CommandResponse)
                # The original outcome, flagged as a repeat.
                return answer.command_id == command_id and answer.duplicate and answer.status is CommandStatus.SUCCEEDED

            assert await asyncio.to_thread(replayer.wait_message, duplicate_answer) is not None
            # Still one effect: the volume was raised once.
            now = client.state(device)
            assert now is not None
            assert now.volume == 50
            assert now.version == state.version


async def test_primary_broker_killed_everyone_moves_to_the_standby(stack: Stack, sdk_client):
    device = "player-2"
    async with sdk_client(stack, "alice") as client:
        await client.command(device, SetVolume(volume=20), timeout=WAIT_S)
        await _wait_state(client, device, lambda s: s.volume == 20)
        stack.brokers[0].kill()
        # The client notices, reconnects to the standby and resyncs; the agent moves too.
        async with asyncio.timeout(WAIT_S):
            async for info in client.connection_changes():
                if (
                    info.state is ConnectionState.CONNECTED
                    and info.endpoint is not None
                    and str(stack.brokers[1].app_port) in str(info.endpoint)
                ):
                    break
        # A non-idempotent command through the standby: executed exactly once.
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            with contextlib.suppress(Exception):
                response = await client.command(device, ChangeVolume(delta=5), timeout=5)
                break
            assert asyncio.get_running_loop().time() < deadline, "no command got through the standby"
        assert response.status is CommandStatus.SUCCEEDED
        state = await _wait_state(client, device, lambda s: s.volume == 25)
        assert state.volume == 25
        await client.command(device, Play(), timeout=WAIT_S)
        await _wait_state(client, device, lambda s: s.status is PlaybackStatus.PLAY)
        assert client.stats.invalid == 0


async def test_killed_agent_shows_its_last_will(stack: Stack, sdk_client):
    player = stack.player("player-2")
    assert player.process is not None
    async with sdk_client(stack, "alice") as client, client.watch("player-2") as events:
        async with asyncio.timeout(WAIT_S):
            while True:
                event = await anext(events)
                if isinstance(event, ConnectionStatus) and event.online:
                    break
            player.process.signal(signal.SIGKILL)
            while True:
                event = await anext(events)
                if isinstance(event, ConnectionStatus) and not event.online:
                    break
        # The broker can publish the Will before the killed process is reaped: wait for its
        # end, or start_agent would take it for still running and start nothing.
        await asyncio.to_thread(player.process.stop)
        # The agent comes back (like systemd would restart it) and says so. Its start-up
        # imports are slow on a busy 2-core machine: allow more than the other waits.
        stack.start_agent(player)
        async with asyncio.timeout(2 * WAIT_S):
            while True:
                event = await anext(events)
                if isinstance(event, ConnectionStatus) and event.online:
                    break


async def test_authz_down_existing_sessions_keep_working(stack: Stack, sdk_client):
    async with sdk_client(stack, "alice") as client:
        assert stack.authz is not None
        stack.authz.stop()
        stack.authz = None
        response = await client.command("player-2", SetVolume(volume=61), timeout=WAIT_S)
        assert response.status is CommandStatus.SUCCEEDED
        state = await _wait_state(client, "player-2", lambda s: s.volume == 61)
        assert state.volume == 61


@pytest.mark.slow
async def test_mpd_restart_is_recovered(stack: Stack, sdk_client):
    assert stack.mpd is not None
    async with sdk_client(stack, "alice") as client:
        await _wait_state(client, "player-1", lambda s: s.error is None)
        stack.mpd.restart()
        # The agent notices, reconnects to MPD and publishes a healthy state again.
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            with contextlib.suppress(Exception):
                response = await client.command("player-1", SetVolume(volume=77), timeout=5)
                if response.status is CommandStatus.SUCCEEDED:
                    break
            assert asyncio.get_running_loop().time() < deadline, "MPD control did not recover"
            await asyncio.sleep(0.2)
        state = await _wait_state(client, "player-1", lambda s: s.volume == 77 and s.error is None)
        assert state.error is None
