"""What the agent needs from a player: a snapshot, a stream of changes, and actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from amora_protocol import Action, PlaybackStatus, PlayerOptions, Song

__all__ = ["ChangeCallback", "Player", "PlayerSnapshot"]

ChangeCallback = Callable[[], None]
"""Called (synchronously, cheaply) whenever the player's state may have changed."""


class PlayerSnapshot(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The player's state at ``sampled_at_ms`` (everything of `DeviceState` but id and version)."""

    status: PlaybackStatus
    sampled_at_ms: int
    elapsed_ms: int | None = None
    song: Song | None = None
    volume: int | None = None
    options: PlayerOptions = PlayerOptions()
    queue_length: int = 0
    queue_version: int = 0


class Player(Protocol):
    """A player backend (MPD, or the simulated player).

    `run` owns the backend's connections for the agent's lifetime: it reconnects by itself
    and calls ``on_change`` after every (re)connect and every relevant event.
    """

    @property
    def backend_version(self) -> str | None:
        """The backend's version (e.g. MPD's protocol version), once connected."""
        ...

    async def run(self, on_change: ChangeCallback) -> None:
        """Keep the backend connected and report changes until cancelled."""
        ...

    async def snapshot(self) -> PlayerSnapshot:
        """Read the current state.

        Raises:
            PlayerUnavailable: The backend cannot be reached right now.
        """
        ...

    async def execute(self, action: Action) -> None:
        """Carry out ``action``.

        Raises:
            PlayerError: The backend refused or failed the action.
            PlayerUnavailable: The backend cannot be reached right now.
        """
        ...
