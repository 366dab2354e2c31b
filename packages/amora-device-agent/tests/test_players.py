import asyncio

import pytest

from amora_agent import PlayerError, SimulatedPlayer
from amora_agent._mpd import snapshot_from_mpd
from amora_protocol import (
    ChangeVolume,
    Next,
    Pause,
    Play,
    PlaybackStatus,
    PlayQueueItem,
    Previous,
    Seek,
    SetVolume,
    SingleMode,
    Stop,
    Toggle,
)


def test_mpd_answers_map_to_a_snapshot() -> None:
    status = {
        "volume": "42",
        "repeat": "1",
        "random": "0",
        "single": "oneshot",
        "consume": "1",
        "playlist": "7",
        "playlistlength": "3",
        "state": "pause",
        "song": "1",
        "songid": "2",
        "elapsed": "12.3456",
        "duration": "180.000",
    }
    song = {
        "file": "a/b.ogg",
        "title": "T",
        "artist": ["A1", "A2"],
        "album": "Al",
        "duration": "180.000",
        "pos": "1",
        "id": "2",
    }
    snap = snapshot_from_mpd(status, song, sampled_at_ms=1_000)
    assert snap.status is PlaybackStatus.PAUSE
    assert snap.elapsed_ms == 12_346
    assert snap.volume == 42
    assert snap.options.repeat
    assert not snap.options.random
    assert snap.options.single is SingleMode.ONESHOT
    assert snap.options.consume
    assert snap.queue_length == 3
    assert snap.queue_version == 7
    assert snap.song is not None
    assert snap.song.artist == "A1; A2"
    assert snap.song.duration_ms == 180_000
    assert (snap.song.id, snap.song.position) == (2, 1)


def test_mpd_without_mixer_or_song() -> None:
    snap = snapshot_from_mpd({"state": "stop", "volume": "-1"}, {}, sampled_at_ms=5)
    assert snap.status is PlaybackStatus.STOP
    assert snap.volume is None
    assert snap.song is None
    assert snap.elapsed_ms is None


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def test_simulated_player_follows_mpd_semantics() -> None:
    clock = Clock()
    player = SimulatedPlayer(tracks=3, track_ms=10_000, clock=clock)
    assert player.snapshot_now().status is PlaybackStatus.STOP
    player.apply(Play())
    clock.ms += 2_500
    snap = player.snapshot_now()
    assert (snap.status, snap.elapsed_ms) == (PlaybackStatus.PLAY, 2_500)
    player.apply(Pause())
    clock.ms += 5_000
    assert player.snapshot_now().elapsed_ms == 2_500
    player.apply(Toggle())
    assert player.snapshot_now().status is PlaybackStatus.PLAY
    player.apply(Seek(position_ms=9_000))
    assert player.snapshot_now().elapsed_ms == 9_000
    with pytest.raises(PlayerError):
        player.apply(Seek(position_ms=20_000))
    player.apply(Next())
    snap = player.snapshot_now()
    assert snap.song is not None
    assert (snap.song.position, snap.elapsed_ms) == (1, 0)
    player.apply(Previous())
    player.apply(PlayQueueItem(position=2))
    assert player.snapshot_now().song.position == 2  # type: ignore[union-attr]
    with pytest.raises(PlayerError):
        player.apply(PlayQueueItem(position=3))
    player.apply(SetVolume(volume=90))
    player.apply(ChangeVolume(delta=30))
    assert player.snapshot_now().volume == 100
    player.apply(Stop())
    assert player.snapshot_now().elapsed_ms is None
    assert player.plays == 2


async def test_simulated_song_end_advances_and_reports() -> None:
    player = SimulatedPlayer(tracks=2, track_ms=20)
    changed = asyncio.Event()
    task = asyncio.create_task(player.run(changed.set))
    try:
        await asyncio.wait_for(changed.wait(), 5)  # initial report
        changed.clear()
        await player.execute(Play())
        changed.clear()
        async with asyncio.timeout(5):
            while player.snapshot_now().song.position != 1:  # type: ignore[union-attr]
                await changed.wait()
                changed.clear()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
