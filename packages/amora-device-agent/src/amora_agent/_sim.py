"""A simulated MPD-like player: the agent's core without MPD, light enough for fleets.

It keeps a queue of generated tracks and a position anchor (elapsed at an instant), so
playing costs nothing until a song ends (one timer per playing player).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from amora_agent._errors import PlayerError
from amora_agent._player import ChangeCallback, PlayerSnapshot
from amora_protocol import (
    Action,
    ChangeVolume,
    Next,
    Pause,
    Ping,
    Play,
    PlaybackStatus,
    PlayerOptions,
    PlayQueueItem,
    Previous,
    Seek,
    SetVolume,
    Song,
    Stop,
    Toggle,
    now_ms,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["SimulatedPlayer"]


class SimulatedPlayer:
    """An in-memory player with MPD's semantics for the actions the protocol has.

    Args:
        tracks: How many tracks the queue holds.
        track_ms: Each track's duration.
        volume: Initial volume.
        clock: Milliseconds since the epoch (replaced in tests).
    """

    def __init__(
        self,
        *,
        tracks: int = 20,
        track_ms: int = 180_000,
        volume: int = 50,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        """Start stopped at the first track."""
        self._clock = clock
        self._queue = tuple(
            Song(
                file=f"sim/track-{i:03d}.ogg",
                id=i + 1,
                position=i,
                title=f"Track {i + 1}",
                artist=f"Simulated Artist {i % 7 + 1}",
                album=f"Simulated Album {i // 10 + 1}",
                duration_ms=track_ms,
            )
            for i in range(tracks)
        )
        self._index = 0
        self._status = PlaybackStatus.STOP
        self._elapsed_ms = 0
        self._anchor_ms = clock()
        self._volume = volume
        self._queue_version = 1
        self._on_change: ChangeCallback | None = None
        self._end_timer: asyncio.TimerHandle | None = None
        self.plays = 0

    @property
    def backend_version(self) -> str | None:
        """A fixed version string for the simulated backend."""
        return "simulated-0.24"

    async def run(self, on_change: ChangeCallback) -> None:
        """Report the initial state, then wait (changes are reported as they are made)."""
        self._on_change = on_change
        on_change()
        try:
            await asyncio.Event().wait()
        finally:
            self._on_change = None
            if self._end_timer is not None:
                self._end_timer.cancel()

    def _elapsed_now(self, now: int) -> int:
        if self._status is PlaybackStatus.PLAY:
            return self._elapsed_ms + max(0, now - self._anchor_ms)
        return self._elapsed_ms

    async def snapshot(self) -> PlayerSnapshot:
        """The current state, with the position sampled now."""
        return self.snapshot_now()

    def snapshot_now(self) -> PlayerSnapshot:
        """The current state, synchronously."""
        now = self._clock()
        song = self._queue[self._index] if self._queue else None
        loaded = self._status is not PlaybackStatus.STOP
        return PlayerSnapshot(
            status=self._status,
            sampled_at_ms=now,
            elapsed_ms=self._elapsed_now(now) if loaded else None,
            song=song,
            volume=self._volume,
            options=PlayerOptions(),
            queue_length=len(self._queue),
            queue_version=self._queue_version,
        )

    def _set(self, status: PlaybackStatus, *, index: int | None = None, elapsed_ms: int | None = None) -> None:
        now = self._clock()
        current = self._elapsed_now(now)
        if index is not None and index != self._index:
            self._index = index
            current = 0
        if elapsed_ms is not None:
            current = elapsed_ms
        if status is PlaybackStatus.STOP:
            current = 0
        if status is PlaybackStatus.PLAY and self._status is not PlaybackStatus.PLAY:
            self.plays += 1
        self._status = status
        self._elapsed_ms = current
        self._anchor_ms = now
        self._schedule_end()
        if self._on_change is not None:
            self._on_change()

    def _schedule_end(self) -> None:
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None
        song = self._queue[self._index] if self._queue else None
        if self._status is PlaybackStatus.PLAY and song is not None and song.duration_ms:
            remaining = max(0, song.duration_ms - self._elapsed_ms)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._end_timer = loop.call_later(remaining / 1000, self._song_ended)

    def _song_ended(self) -> None:
        self._end_timer = None
        if self._index + 1 < len(self._queue):
            self._set(PlaybackStatus.PLAY, index=self._index + 1, elapsed_ms=0)
        else:
            self._set(PlaybackStatus.STOP, index=0)

    def apply(self, action: Action) -> None:  # noqa: C901, PLR0912 - one branch per action
        """Carry out ``action`` synchronously (also how a test simulates a button press).

        Raises:
            PlayerError: As MPD would refuse it (bad position, seek while stopped).
        """
        match action:
            case Play():
                self._set(PlaybackStatus.PLAY)
            case Pause():
                if self._status is PlaybackStatus.PLAY:
                    self._set(PlaybackStatus.PAUSE)
            case Toggle():
                self._set(PlaybackStatus.PAUSE if self._status is PlaybackStatus.PLAY else PlaybackStatus.PLAY)
            case Stop():
                self._set(PlaybackStatus.STOP)
            case Next():
                if self._index + 1 >= len(self._queue):
                    self._set(PlaybackStatus.STOP, index=0)
                else:
                    self._set(self._status, index=self._index + 1, elapsed_ms=0)
            case Previous():
                self._set(self._status, index=max(0, self._index - 1), elapsed_ms=0)
            case Seek(position_ms=position):
                song = self._queue[self._index] if self._queue else None
                if self._status is PlaybackStatus.STOP or song is None:
                    raise PlayerError("not playing", action="seek")
                if song.duration_ms is not None and position > song.duration_ms:
                    raise PlayerError("seek past the end of the song", action="seek")
                self._set(self._status, elapsed_ms=position)
            case SetVolume(volume=volume):
                self._volume = volume
                self._set(self._status)
            case ChangeVolume(delta=delta):
                self._volume = min(100, max(0, self._volume + delta))
                self._set(self._status)
            case PlayQueueItem(position=position):
                if position >= len(self._queue):
                    raise PlayerError("bad song index", action="play_queue_item")
                self._set(PlaybackStatus.PLAY, index=position, elapsed_ms=0)
            case Ping():
                pass

    async def execute(self, action: Action) -> None:
        """Carry out ``action``.

        Raises:
            PlayerError: As MPD would refuse it.
        """
        self.apply(action)
