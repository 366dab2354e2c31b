"""The agent over a real MPD (null output, software mixer) and a real mosquitto."""

import asyncio
import os
import signal
from typing import Any

import pytest

from amora_agent import MpdPlayer
from amora_protocol import (
    Action,
    Codec,
    CommandStatus,
    DeviceState,
    PlaybackStatus,
    SetVolume,
    VerifyKey,
    commands_topic,
    connection_topic,
    responses_topic,
    state_topic,
)

pytestmark = pytest.mark.services

DEVICE = "player-1"


def state_where(key: VerifyKey, predicate: Any) -> Any:
    def check(received) -> bool:
        if received.topic != state_topic(DEVICE):
            return False
        state = received.message(key)
        return isinstance(state, DeviceState) and predicate(state)

    return check


def mpd_do(server: Any, *calls: tuple[Any, ...]) -> Any:
    with server.client() as client:
        for name, *args in calls:
            getattr(client, name)(*args)
        return client.status()


async def test_mpd_pause_and_command(broker, live_mpd, live_device, live_app) -> None:
    device = live_device(broker)
    key = device.signing_key.public_key
    app, client = live_app(broker, (DEVICE,))
    player = MpdPlayer(live_mpd.host, live_mpd.port)
    async with device.agent(player) as agent, client:
        await asyncio.wait_for(agent.wait_online(), 15)
        await client.subscribe(state_topic(DEVICE), responses_topic(DEVICE))
        await client.wait_for(state_where(key, lambda s: s.error is None))

        # A pause in MPD appears as a signed, retained state with the song and position.
        mark = len(client.messages)
        await asyncio.to_thread(mpd_do, live_mpd, ("play", 2), ("pause", 1))
        paused = (
            await client.wait_for(state_where(key, lambda s: s.status is PlaybackStatus.PAUSE), start=mark)
        ).message(key)
        assert paused.song is not None
        assert paused.song.title == live_mpd.tracks[2].title
        assert paused.song.artist == live_mpd.tracks[2].artist
        assert paused.elapsed_ms is not None
        assert paused.queue_length == len(live_mpd.tracks)
        assert paused.volume == 80
        assert paused.position_at(paused.sampled_at_ms + 10_000) == paused.elapsed_ms

        # A late subscriber gets it retained.
        _, late = live_app(broker, (DEVICE,))
        async with late:
            await late.subscribe(state_topic(DEVICE))
            retained = await late.wait_for(lambda r: r.topic == state_topic(DEVICE))
            assert retained.retain
            late_state = retained.message(key)
            assert late_state.version >= paused.version
            assert late_state.status is PlaybackStatus.PAUSE

        # A command from an authorised session changes MPD and succeeds.
        answer = await client.send(app, DEVICE, SetVolume(volume=30), key=key)
        assert answer.status is CommandStatus.SUCCEEDED
        status = await asyncio.to_thread(mpd_do, live_mpd)
        assert status["volume"] == "30"
        await client.wait_for(state_where(key, lambda s: s.volume == 30))


async def test_mpd_restart_is_survived(broker, live_mpd, live_device, live_app) -> None:
    device = live_device(broker)
    key = device.signing_key.public_key
    app, client = live_app(broker, (DEVICE,))
    player = MpdPlayer(live_mpd.host, live_mpd.port)
    async with device.agent(player) as agent, client:
        await asyncio.wait_for(agent.wait_online(), 15)
        await client.subscribe(state_topic(DEVICE), responses_topic(DEVICE), connection_topic(DEVICE))
        await client.wait_for(state_where(key, lambda s: s.error is None))
        mark = len(client.messages)
        await asyncio.to_thread(live_mpd.kill)
        down = await client.wait_for(state_where(key, lambda s: s.error is not None), start=mark)
        assert down.message(key).error == "player unavailable"
        mark = len(client.messages)
        await asyncio.to_thread(live_mpd.restart)
        await client.wait_for(state_where(key, lambda s: s.error is None), start=mark)
        # Commands work again on the new connection.
        answer = await client.send(app, DEVICE, SetVolume(volume=55), key=key)
        assert answer.status is CommandStatus.SUCCEEDED
        assert (await asyncio.to_thread(mpd_do, live_mpd))["volume"] == "55"


async def test_a_command_sent_while_mpd_is_away_waits_for_its_return(broker, live_mpd, live_device, live_app) -> None:
    # A burst of commands right after the agent (or MPD) restarts must not fail one by one
    # while the connection is being made again: each waits, bounded by the call timeout.
    device = live_device(broker)
    key = device.signing_key.public_key
    app, client = live_app(broker, (DEVICE,))
    entered = asyncio.Event()

    class Observed(MpdPlayer):
        async def execute(self, action: Action) -> None:
            entered.set()
            await super().execute(action)

    player = Observed(live_mpd.host, live_mpd.port, call_timeout_s=60)
    async with device.agent(player) as agent, client:
        await asyncio.wait_for(agent.wait_online(), 15)
        await client.subscribe(state_topic(DEVICE), responses_topic(DEVICE))
        await client.wait_for(state_where(key, lambda s: s.error is None))
        mark = len(client.messages)
        await asyncio.to_thread(live_mpd.kill)
        # The state says so at once (state reads do not wait) ...
        await client.wait_for(state_where(key, lambda s: s.error is not None), start=mark)
        # ... while a command sent now waits for MPD instead of failing.
        pending = asyncio.create_task(client.send(app, DEVICE, SetVolume(volume=44), key=key))
        await asyncio.wait_for(entered.wait(), 15)  # the agent is running it, MPD is away
        await asyncio.to_thread(live_mpd.restart)
        answer = await pending
        assert answer.status is CommandStatus.SUCCEEDED, answer
        assert (await asyncio.to_thread(mpd_do, live_mpd))["volume"] == "44"


async def test_a_stalled_mpd_fails_the_command_and_is_reconnected(broker, live_mpd, live_device, live_app) -> None:
    device = live_device(broker)
    key = device.signing_key.public_key
    app, client = live_app(broker, (DEVICE,))
    player = MpdPlayer(live_mpd.host, live_mpd.port, call_timeout_s=0.5)

    def send(volume: int) -> str:
        command, payload = app.command(DEVICE, SetVolume(volume=volume))
        client.publish(
            commands_topic(DEVICE), payload, content_type=Codec.MSGPACK.value, correlation_data=command.id.encode()
        )
        return str(command.id)

    async def answer_to(command_id: str, start: int) -> Any:
        found = await client.wait_for(
            lambda r: r.topic == responses_topic(DEVICE) and r.message(key).command_id == command_id, start=start
        )
        return found.message(key)

    async with device.agent(player) as agent, client:
        await asyncio.wait_for(agent.wait_online(), 15)
        await client.subscribe(state_topic(DEVICE), responses_topic(DEVICE))
        await client.wait_for(state_where(key, lambda s: s.error is None))
        # A real MPD that stops answering but keeps its sockets open.
        os.kill(live_mpd.pid, signal.SIGSTOP)
        try:
            mark = len(client.messages)
            stalled = await answer_to(send(21), mark)
            assert stalled.status is CommandStatus.FAILED
            assert "did not answer" in (stalled.message or "")
            # The command queue is not blocked behind MPD: the next one is answered too.
            after = await answer_to(send(22), mark)
            assert after.status is CommandStatus.FAILED
        finally:
            os.kill(live_mpd.pid, signal.SIGCONT)
        # Reconnected: a healthy state, and commands work again.
        mark = len(client.messages)
        await client.wait_for(state_where(key, lambda s: s.error is None), start=mark)
        answer = await answer_to(send(55), len(client.messages))
        assert answer.status is CommandStatus.SUCCEEDED
        assert (await asyncio.to_thread(mpd_do, live_mpd))["volume"] == "55"
