"""Message schemas (wire format: this package's README): frozen msgspec Structs, times in ms since the Unix epoch.

Unknown fields are ignored on decode, so newer senders can add fields; a missing
required field, a wrong type or a value out of range is a `SchemaError`.
"""

from __future__ import annotations

import enum
from typing import Annotated, ClassVar, Final

import msgspec

from amora_protocol._topics import DEVICE_ID_PATTERN

__all__ = [
    "ACTIONS",
    "Action",
    "ChangeVolume",
    "Command",
    "CommandResponse",
    "CommandStatus",
    "ConnectionStatus",
    "DeviceState",
    "Grant",
    "Message",
    "MessageType",
    "Next",
    "Pause",
    "Ping",
    "Play",
    "PlayQueueItem",
    "PlaybackStatus",
    "PlayerOptions",
    "Previous",
    "RejectReason",
    "Right",
    "Seek",
    "SetVolume",
    "SingleMode",
    "Song",
    "Stop",
    "Toggle",
    "is_critical",
]

DeviceId = Annotated[str, msgspec.Meta(pattern=DEVICE_ID_PATTERN)]
TimestampMs = Annotated[int, msgspec.Meta(ge=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Volume = Annotated[int, msgspec.Meta(ge=0, le=100)]
# Ids travel in logs, files and MQTT correlation data: a safe alphabet only (UUIDs, tokens).
IDENTIFIER_PATTERN: Final = r"^[A-Za-z0-9._:-]{1,128}$"
Identifier = Annotated[str, msgspec.Meta(pattern=IDENTIFIER_PATTERN)]
ShortText = Annotated[str, msgspec.Meta(max_length=1024)]


class _Frozen(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Base of every message value: immutable, keyword-built, defaults left off the wire.

    ``gc=False`` (inherited): no instance is ever tracked by the cyclic garbage collector. Safe
    because a value holds only immutable scalars, bytes, enum members, tuples of those and
    other such values, so it can never be part of a reference cycle (checked field by field in
    ``tests/test_gc_free.py``). A client holding thousands of states, or an app receiving
    thousands per second, then gives the collector nothing to walk or count for them.
    """


class PlaybackStatus(enum.StrEnum):
    """MPD's player state."""

    PLAY = "play"
    PAUSE = "pause"
    STOP = "stop"


class SingleMode(enum.StrEnum):
    """MPD's ``single`` option."""

    OFF = "off"
    ON = "on"
    ONESHOT = "oneshot"


class Song(_Frozen, frozen=True):
    """The current song as MPD describes it."""

    file: ShortText
    id: NonNegative | None = None
    position: NonNegative | None = None
    title: ShortText | None = None
    artist: ShortText | None = None
    album: ShortText | None = None
    duration_ms: NonNegative | None = None


class PlayerOptions(_Frozen, frozen=True):
    """Playback options."""

    repeat: bool = False
    random: bool = False
    single: SingleMode = SingleMode.OFF
    consume: bool = False


class DeviceState(_Frozen, frozen=True):
    """A player's whole state at one instant.

    ``elapsed_ms`` was read at ``sampled_at_ms``; while playing, clients add the time since
    (see `position_at`) instead of waiting for more messages. ``version`` strictly increases
    for a device, across agent restarts; a state whose version is not newer than the one a
    client holds is ignored (retained re-delivery and bridge duplicates are normal).
    """

    device_id: DeviceId
    version: NonNegative
    status: PlaybackStatus
    sampled_at_ms: TimestampMs
    elapsed_ms: NonNegative | None = None
    song: Song | None = None
    volume: Volume | None = None
    options: PlayerOptions = PlayerOptions()
    queue_length: NonNegative = 0
    queue_version: NonNegative = 0
    error: ShortText | None = None

    def position_at(self, now_ms: int) -> int | None:
        """Return the playback position at ``now_ms``, interpolated while playing.

        Capped at the song's duration when it is known; ``None`` when nothing is loaded.
        """
        if self.elapsed_ms is None:
            return None
        if self.status is not PlaybackStatus.PLAY:
            return self.elapsed_ms
        position = self.elapsed_ms + max(0, now_ms - self.sampled_at_ms)
        if self.song is not None and self.song.duration_ms is not None:
            position = min(position, self.song.duration_ms)
        return position


class _Action(_Frozen, frozen=True, tag_field="type"):
    """Base of the command actions (a tagged union on ``type``)."""

    # Actions whose repetition changes the outcome; sent with QoS 2 by default.
    critical: ClassVar[bool] = False


class Play(_Action, frozen=True, tag="play"):
    """Start or resume playback."""


class Pause(_Action, frozen=True, tag="pause"):
    """Pause playback (no effect when already paused or stopped)."""


class Toggle(_Action, frozen=True, tag="toggle"):
    """Play if paused or stopped, pause if playing."""

    critical = True


class Stop(_Action, frozen=True, tag="stop"):
    """Stop playback."""


class Next(_Action, frozen=True, tag="next"):
    """Skip to the next song in the queue."""

    critical = True


class Previous(_Action, frozen=True, tag="previous"):
    """Go back to the previous song in the queue."""

    critical = True


class Seek(_Action, frozen=True, tag="seek"):
    """Seek within the current song."""

    position_ms: NonNegative


class SetVolume(_Action, frozen=True, tag="set_volume"):
    """Set the volume (0-100)."""

    volume: Volume


class ChangeVolume(_Action, frozen=True, tag="change_volume"):
    """Change the volume by a delta, clamped to 0-100."""

    delta: Annotated[int, msgspec.Meta(ge=-100, le=100)]

    critical = True


class PlayQueueItem(_Action, frozen=True, tag="play_queue_item"):
    """Play the queue entry at ``position`` (0-based)."""

    position: NonNegative


class Ping(_Action, frozen=True, tag="ping"):
    """A harmless command: the device answers without touching the player."""


Action = Play | Pause | Toggle | Stop | Next | Previous | Seek | SetVolume | ChangeVolume | PlayQueueItem | Ping
ACTIONS: Final[tuple[type[_Action], ...]] = (
    Play,
    Pause,
    Toggle,
    Stop,
    Next,
    Previous,
    Seek,
    SetVolume,
    ChangeVolume,
    PlayQueueItem,
    Ping,
)


def is_critical(action: Action) -> bool:
    """Whether repeating ``action`` would change the outcome (so it deserves QoS 2)."""
    return action.critical


class Command(_Frozen, frozen=True):
    """An instruction for one device; executed at most once per ``id``.

    ``if_version``: apply only if the device's state version still equals it.
    """

    id: Identifier
    issued_at_ms: TimestampMs
    expires_at_ms: TimestampMs
    action: Action
    if_version: NonNegative | None = None


class CommandStatus(enum.StrEnum):
    """How a device answered a command.

    ``accepted`` is not final: the command is running (an answer to a resent id whose first
    copy is still in progress); the final answer follows. ``duplicate`` is final and means the
    id was seen before but its outcome is not known (the device restarted while running it);
    a device that knows the original outcome answers with it instead (see
    `CommandResponse.duplicate`).
    """

    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


class RejectReason(enum.StrEnum):
    """Why a command was rejected (it did not run).

    ``busy``: the device cannot take more commands now; retrying later (after
    ``retry_after_ms``) may succeed. ``clock-skew``: the device's clock and the sender's differ
    by more than the allowance; ``clock_offset_ms`` carries the measured difference.
    """

    UNAUTHORIZED = "unauthorized"
    EXPIRED = "expired"
    VERSION_MISMATCH = "version-mismatch"
    INVALID = "invalid"
    UNSUPPORTED = "unsupported"
    BUSY = "busy"
    CLOCK_SKEW = "clock-skew"


class CommandResponse(_Frozen, frozen=True):
    """A device's answer to one command (``command_id`` is also the MQTT correlation data).

    Attributes:
        duplicate: True when this answers an id the device had already received: ``status``,
            ``reason``, ``message`` and ``state_version`` then repeat the original outcome (so a
            retry after a lost response learns what happened), ``at_ms`` is when it was first
            answered, and nothing ran again.
        clock_offset_ms: The device's clock minus the sender's, as measured from the command
            (``now - header.ts_ms``, transit included); set on ``clock-skew`` rejections,
            may be set on any answer.
        retry_after_ms: On ``busy``: how long to wait before sending again.
    """

    command_id: Identifier
    device_id: DeviceId
    status: CommandStatus
    at_ms: TimestampMs
    reason: RejectReason | None = None
    message: ShortText | None = None
    state_version: NonNegative | None = None
    duplicate: bool = False
    clock_offset_ms: int | None = None
    retry_after_ms: NonNegative | None = None


class ConnectionStatus(_Frozen, frozen=True):
    """Whether a device is connected; the offline form is its Last Will.

    ``version`` comes from the same counter as `DeviceState.version` (strictly increasing per
    device): a Last Will is numbered when its connection is made, so a stale Will that a broker
    (or a bridge) delivers late carries a lower version than the online status that followed;
    a client ignores a status whose version is lower than the newest one it holds. Devices
    also correct a stale offline status on their topic at once.
    """

    device_id: DeviceId
    online: bool
    at_ms: TimestampMs
    agent_version: ShortText | None = None
    reason: ShortText | None = None
    version: NonNegative | None = None


class Right(enum.StrEnum):
    """What a grant lets a session do with its devices."""

    WATCH = "watch"
    CONTROL = "control"


class Grant(_Frozen, frozen=True):
    """The authz service's statement that a session may use some devices.

    Signed by the authz service (see `issue_grant`); devices check it before executing
    a command signed with ``signing_key``.
    """

    grant_id: Identifier
    subject: ShortText
    session_id: Identifier
    signing_key: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    devices: tuple[DeviceId, ...]
    rights: tuple[Right, ...]
    issued_at_ms: TimestampMs
    expires_at_ms: TimestampMs
    encryption_key: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)] | None = None


class MessageType(enum.StrEnum):
    """The ``type`` of an envelope's header; it names the body's schema."""

    STATE = "state"
    COMMAND = "command"
    RESPONSE = "response"
    CONNECTION = "connection"


Message = DeviceState | Command | CommandResponse | ConnectionStatus
