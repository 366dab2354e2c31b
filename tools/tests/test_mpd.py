from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import pytest
from mpd.asyncio import MPDClient

from amora_devtools.music import DEFAULT_TRACKS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def player(mpd_server):
    client = MPDClient()
    await client.connect(mpd_server.host, mpd_server.port)
    try:
        yield client
    finally:
        client.disconnect()


async def _next_event(idle: AsyncIterator[list[str]], subsystem: str) -> None:
    """Wait (bounded) for the idle stream to report `subsystem`."""
    async with asyncio.timeout(10):
        async for changed in idle:
            if subsystem in changed:
                return


async def test_library_has_the_generated_tracks_with_their_tags(player):
    songs = [s for s in await player.listallinfo() if "file" in s]
    by_file = {s["file"]: s for s in songs}
    assert set(by_file) == {t.file for t in DEFAULT_TRACKS}
    for track in DEFAULT_TRACKS:
        song = by_file[track.file]
        assert (song["title"], song["artist"], song["album"]) == (track.title, track.artist, track.album)
        assert float(song["duration"]) == pytest.approx(track.seconds, abs=0.01)


async def test_play_pause_seek_and_volume(mpd_server, player):
    events = MPDClient()
    await events.connect(mpd_server.host, mpd_server.port)
    try:
        idle = events.idle(["player", "mixer"])
        first = asyncio.ensure_future(_next_event(idle, "player"))
        for track in DEFAULT_TRACKS[:2]:
            await player.add(track.file)
        await player.play(0)
        await first  # the player announced the change
        status = await player.status()
        assert status["state"] == "play"
        assert (await player.currentsong())["title"] == DEFAULT_TRACKS[0].title

        await player.pause(1)
        assert (await player.status())["state"] == "pause"

        await player.seekcur(2.5)
        status = await player.status()
        assert float(status["elapsed"]) == pytest.approx(2.5, abs=0.05)
        assert status["state"] == "pause"

        await player.setvol(35)
        assert (await player.status())["volume"] == "35"

        await player.pause(0)
        assert (await player.status())["state"] == "play"
        await player.next()
        assert (await player.currentsong())["title"] == DEFAULT_TRACKS[1].title
    finally:
        events.disconnect()


async def test_a_track_plays_to_its_end(player):
    # The shortest track really decodes and ends: MPD moves on by itself.
    shortest = min(DEFAULT_TRACKS, key=lambda t: t.seconds)
    await player.add(shortest.file)
    await player.add(DEFAULT_TRACKS[0].file)
    await player.play(0)
    await player.seekcur(shortest.seconds - 0.2)
    async with asyncio.timeout(10):
        async for _changed in player.idle(["player"]):
            if (await player.currentsong()).get("title") == DEFAULT_TRACKS[0].title:
                break


def test_restart_keeps_port_and_queue(mpd_server):
    with mpd_server.client() as client:
        client.add(DEFAULT_TRACKS[3].file)
    port, pid = mpd_server.port, mpd_server.pid
    mpd_server.restart()
    assert mpd_server.port == port
    assert mpd_server.pid != pid
    with mpd_server.client() as client:
        assert [s["file"] for s in client.playlistinfo()] == [DEFAULT_TRACKS[3].file]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
