"""The analytics figures from known states, on a real PostgreSQL (the harness's `postgres_dsn`)."""

from __future__ import annotations

import pytest
from amora_analytics import StateStore

from amora_protocol import ConnectionStatus, DeviceState, PlaybackStatus, Song

pytestmark = pytest.mark.services


def _state(version: int, status: PlaybackStatus, song: str | None, at_ms: int) -> DeviceState:
    return DeviceState(
        device_id="player-1",
        version=version,
        status=status,
        sampled_at_ms=at_ms,
        song=None if song is None else Song(file=song),
    )


PLAY, PAUSE, STOP = PlaybackStatus.PLAY, PlaybackStatus.PAUSE, PlaybackStatus.STOP
STATES = [
    _state(1, STOP, None, 1_000),
    _state(2, PLAY, "a.flac", 2_000),  # a play: from stopped
    _state(3, PLAY, "a.flac", 5_000),  # the same song still playing (volume, seek): no new play
    _state(4, PLAY, "b.flac", 9_000),  # a play: a new song while playing
    _state(5, PAUSE, "b.flac", 10_000),
    _state(6, PLAY, "b.flac", 20_000),  # a play: resumed
    _state(7, STOP, None, 21_000),
]


async def test_figures_count_plays_listening_time_and_last_seen(postgres_dsn: str) -> None:
    async with StateStore(postgres_dsn) as store:
        # Out of order and with duplicates, as at-least-once delivery over replicas may hand them.
        for state in [STATES[3], *STATES, STATES[1], STATES[6]]:
            await store.add_state(state, replica=1, slot=1)
        assert await store.versions("player-1") == [1, 2, 3, 4, 5, 6, 7]
        stats = await store.stats("player-1")
        assert stats is not None
        assert (stats.states, stats.plays) == (7, 3)
        # Playing from 2_000 to 10_000 (versions 2-4) and 20_000 to 21_000 (version 6).
        assert stats.listening_ms == 8_000 + 1_000
        assert stats.last_seen_ms == 21_000
        assert await store.add_status(ConnectionStatus(device_id="player-1", online=False, at_ms=30_000))
        assert not await store.add_status(ConnectionStatus(device_id="player-1", online=False, at_ms=30_000))
        stats = await store.stats("player-1")
        assert stats is not None
        assert stats.last_seen_ms == 30_000
        assert await store.stats("player-9") is None


async def test_a_duplicate_state_is_stored_once_and_reported_as_such(postgres_dsn: str) -> None:
    async with StateStore(postgres_dsn) as first, StateStore(postgres_dsn) as second:  # two replicas, one schema
        assert await first.add_state(STATES[1], replica=1, slot=1)
        assert not await second.add_state(STATES[1], replica=2, slot=2)
        assert await first.versions("player-1") == [2]


async def test_an_unreachable_database_names_the_fix() -> None:
    from amora_analytics._db import AnalyticsError  # noqa: PLC0415

    with pytest.raises(AnalyticsError, match="check --database-url"):
        async with StateStore("postgresql://amora@127.0.0.1:1/none?connect_timeout=2"):
            pass
