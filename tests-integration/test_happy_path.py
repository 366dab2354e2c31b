"""A user watches and commands their players through the real stack."""

from __future__ import annotations

import asyncio

from amora_devtools.stack import Stack
from amora_protocol import PlaybackStatus
from amora_sync import ConnectionStatus, DeviceState, Pause, Play, SetVolume

WAIT_S = 15.0


async def test_state_commands_responses_and_connection_status(stack: Stack, sdk_client):
    async with sdk_client(stack, "alice") as client:
        assert sorted(d.device_id for d in client.devices) == ["player-1", "player-2"]
        seen: dict[str, DeviceState] = {}
        online: dict[str, bool] = {}
        async with client.watch() as events:

            async def until(predicate) -> None:
                async with asyncio.timeout(WAIT_S):
                    while not predicate():
                        event = await anext(events)
                        if isinstance(event, DeviceState):
                            seen[event.device_id] = event
                        elif isinstance(event, ConnectionStatus):
                            online[event.device_id] = event.online

            # The retained state and connection status of both players come first.
            await until(
                lambda: {"player-1", "player-2"} <= seen.keys() and online == {"player-1": True, "player-2": True}
            )
            for device in ("player-1", "player-2"):
                before = seen[device].version
                response = await client.command(device, Play(), timeout=WAIT_S)
                assert response.status.value == "succeeded"
                await until(lambda d=device, v=before: seen[d].version > v and seen[d].status is PlaybackStatus.PLAY)
                response = await client.command(device, SetVolume(volume=33), timeout=WAIT_S)
                assert response.status.value == "succeeded"
                await until(lambda d=device: seen[d].volume == 33)
                await client.command(device, Pause(), timeout=WAIT_S)
                await until(lambda d=device: seen[d].status is PlaybackStatus.PAUSE)
            # The real MPD player reports a real song with a real duration from MPD.
            song = seen["player-1"].song
            assert song is not None
            assert song.title in {t.title for t in stack.mpd.tracks}  # type: ignore[union-attr]
            assert song.duration_ms is not None
            assert song.duration_ms > 0
            assert client.stats.invalid == 0
