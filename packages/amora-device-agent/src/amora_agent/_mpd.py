"""The MPD backend (python-mpd2 asyncio), with one connection for idle and one for commands.

Strategy: python-mpd2 waits ``IMMEDIATE_COMMAND_TIMEOUT`` (100 ms) before it re-enters idle
after a command *or an idle result*, so sharing one connection would delay events by up to
that much, and even a dedicated idle connection is blind for 100 ms after each event (MPD
then reports what happened meanwhile only when idle is sent again). The idle connection
never sends other commands, so it re-enters idle at once; commands and snapshots go over
the second connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Final

import structlog
from mpd import CommandError, MPDError
from mpd.asyncio import MPDClient

from amora_agent._errors import PlayerError, PlayerUnavailable
from amora_agent._player import ChangeCallback, PlayerSnapshot
from amora_protocol import (
    Action,
    Backoff,
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
    SingleMode,
    Song,
    Stop,
    Toggle,
    now_ms,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MpdPlayer", "snapshot_from_mpd"]

SUBSYSTEMS: Final = ("player", "mixer", "playlist", "options")
_STATUS: Final = {"play": PlaybackStatus.PLAY, "pause": PlaybackStatus.PAUSE}
_SINGLE: Final = {"1": SingleMode.ON, "oneshot": SingleMode.ONESHOT}
# Seconds python-mpd2 waits for a command before re-entering idle on the idle connection.
_IDLE_REENTRY_S: Final = 0.0005


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _ms(value: object) -> int | None:
    try:
        seconds = float(str(value))
    except ValueError:
        return None
    return max(0, round(seconds * 1000))


def _text(value: object) -> str | None:
    # MPD repeats a tag when a song has several values (two artists): python-mpd2 gives a list.
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)[:1024] or None
    return str(value)[:1024] if value is not None else None


def snapshot_from_mpd(status: dict[str, Any], song: dict[str, Any], *, sampled_at_ms: int) -> PlayerSnapshot:
    """Map MPD's ``status`` and ``currentsong`` answers to a snapshot."""
    current: Song | None = None
    if song.get("file"):
        current = Song(
            file=str(song["file"])[:1024],
            id=_int(song.get("id")),
            position=_int(song.get("pos")),
            title=_text(song.get("title")),
            artist=_text(song.get("artist")),
            album=_text(song.get("album")),
            duration_ms=_ms(song.get("duration", song.get("time"))),
        )
    volume = _int(status.get("volume"))
    return PlayerSnapshot(
        status=_STATUS.get(str(status.get("state")), PlaybackStatus.STOP),
        sampled_at_ms=sampled_at_ms,
        elapsed_ms=_ms(status["elapsed"]) if "elapsed" in status else None,
        song=current,
        volume=volume if volume is not None and 0 <= volume <= 100 else None,
        options=PlayerOptions(
            repeat=status.get("repeat") == "1",
            random=status.get("random") == "1",
            single=_SINGLE.get(str(status.get("single")), SingleMode.OFF),
            consume=status.get("consume") == "1",
        ),
        queue_length=_int(status.get("playlistlength")) or 0,
        queue_version=_int(status.get("playlist")) or 0,
    )


class MpdPlayer:
    """A real MPD, reached over TCP (or a Unix socket when ``host`` is a path).

    Args:
        host: MPD's host name, address or socket path.
        port: MPD's TCP port.
        password: MPD's password, if it has one.
        connect_timeout_s: Bound on one connection attempt.
        call_timeout_s: Bound on one command or state read; past it MPD counts as stalled:
            both connections are dropped and reopened (a python-mpd2 command cannot be
            abandoned on a connection that stays open), and the caller gets `PlayerUnavailable`.
        backoff: Delays between reconnection attempts.
        logger: A structlog logger (the agent's, bound to the device).
        on_reconnect: Called on each connection after the first (metrics).
    """

    def __init__(  # noqa: PLR0913 - optional knobs are keyword-only
        self,
        host: str = "127.0.0.1",
        port: int = 6600,
        *,
        password: str | None = None,
        connect_timeout_s: float = 5.0,
        call_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        """Configure; nothing connects before `run`."""
        self._host = host
        self._port = port
        self._password = password
        self._timeout = connect_timeout_s
        self._call_timeout = call_timeout_s
        self._idle: MPDClient | None = None
        self._backoff = backoff or Backoff(initial=0.1, maximum=5.0)
        self._log = logger if logger is not None else structlog.get_logger("amora_agent.mpd")
        self._commands: MPDClient | None = None
        # Set while both connections are up: a command that finds MPD reconnecting (at start,
        # or after a stall dropped the connections) waits for it rather than failing at once.
        self._connected = asyncio.Event()
        self._version: str | None = None
        self._on_reconnect = on_reconnect
        self._connections = 0

    @property
    def backend_version(self) -> str | None:
        """MPD's protocol version from its greeting."""
        return self._version

    async def _open(self, *, idle_only: bool = False) -> MPDClient:
        client = MPDClient()
        if idle_only:
            client.IMMEDIATE_COMMAND_TIMEOUT = _IDLE_REENTRY_S
        await asyncio.wait_for(client.connect(self._host, self._port), self._timeout)
        if self._password is not None:
            await asyncio.wait_for(client.password(self._password), self._timeout)
        return client

    async def run(self, on_change: ChangeCallback) -> None:
        """Keep both connections up, calling ``on_change`` on each (re)connect and event."""
        while True:
            idle: MPDClient | None = None
            commands: MPDClient | None = None
            try:
                idle = await self._open(idle_only=True)
                commands = await self._open()
                self._idle, self._commands = idle, commands
                self._connected.set()
                self._version = str(commands.mpd_version)
                self._log.info("mpd connected", mpd=f"{self._host}:{self._port}", version=self._version)
                self._connections += 1
                if self._connections > 1 and self._on_reconnect is not None:
                    self._on_reconnect()
                self._backoff.reset()
                on_change()
                async for _changed in idle.idle(SUBSYSTEMS):
                    on_change()
            except (OSError, MPDError, TimeoutError) as exc:
                self._log.warning("mpd connection lost", error=str(exc) or type(exc).__name__)
            finally:
                self._connected.clear()
                self._idle = self._commands = None
                for client in (idle, commands):
                    if client is not None:
                        with contextlib.suppress(Exception):
                            client.disconnect()
            # The state is unknown while MPD is away; the agent republishes once it is back.
            on_change()
            await asyncio.sleep(self._backoff.next_delay())

    def _stalled(self) -> PlayerUnavailable:
        """Drop both connections (`run` reconnects) and say why."""
        self._connected.clear()
        for client in (self._idle, self._commands):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.disconnect()
        self._log.warning("mpd stalled; reconnecting", timeout_s=self._call_timeout)
        return PlayerUnavailable(f"MPD did not answer within {self._call_timeout} s")

    async def _client(self, *, wait: bool) -> MPDClient:
        """The command connection; with ``wait``, up to the call timeout while MPD (re)connects.

        Commands wait (a reconnect takes milliseconds; failing a burst of them for it would
        not be honest); state reads do not, so a player that is away shows at once.
        """
        if wait and not self._connected.is_set():
            try:
                async with asyncio.timeout(self._call_timeout):
                    await self._connected.wait()
            except TimeoutError:
                raise PlayerUnavailable(f"MPD is not connected (waited {self._call_timeout} s)") from None
        commands = self._commands
        if commands is None or not self._connected.is_set():  # lost again meanwhile
            raise PlayerUnavailable("MPD is not connected")
        return commands

    async def snapshot(self) -> PlayerSnapshot:
        """Read ``status`` and ``currentsong``.

        Raises:
            PlayerUnavailable: MPD is not connected or the connection dropped.
        """
        client = await self._client(wait=False)
        try:
            async with asyncio.timeout(self._call_timeout):
                status = await client.status()
                sampled = now_ms()
                song = await client.currentsong() if "songid" in status else {}
        except TimeoutError:
            raise self._stalled() from None
        except (OSError, MPDError) as exc:
            raise PlayerUnavailable(f"MPD: {exc}") from exc
        return snapshot_from_mpd(status, song, sampled_at_ms=sampled)

    async def execute(self, action: Action) -> None:
        """Carry out ``action`` on MPD.

        Raises:
            PlayerError: MPD refused it (e.g. no such queue position).
            PlayerUnavailable: MPD is not connected.
        """
        client = await self._client(wait=True)
        try:
            async with asyncio.timeout(self._call_timeout):
                await self._execute(client, action)
        except TimeoutError:
            raise self._stalled() from None
        except CommandError as exc:
            raise PlayerError(f"MPD refused: {exc}", action=type(action).__name__) from exc
        except (OSError, MPDError) as exc:
            raise PlayerUnavailable(f"MPD: {exc}") from exc

    @staticmethod
    async def _execute(client: MPDClient, action: Action) -> None:  # noqa: C901, PLR0912 - one branch per action
        match action:
            case Play():
                status = await client.status()
                await (client.pause(0) if status.get("state") == "pause" else client.play())
            case Pause():
                await client.pause(1)
            case Toggle():
                status = await client.status()
                if status.get("state") == "play":
                    await client.pause(1)
                elif status.get("state") == "pause":
                    await client.pause(0)
                else:
                    await client.play()
            case Stop():
                await client.stop()
            case Next():
                await client.next()
            case Previous():
                await client.previous()
            case Seek(position_ms=position):
                await client.seekcur(f"{position / 1000:.3f}")
            case SetVolume(volume=volume):
                await client.setvol(volume)
            case ChangeVolume(delta=delta):
                status = await client.status()
                current = _int(status.get("volume"))
                if current is None or current < 0:
                    raise PlayerError("MPD has no mixer", action="change_volume")
                await client.setvol(min(100, max(0, current + delta)))
            case PlayQueueItem(position=position):
                await client.play(position)
            case Ping():
                pass
