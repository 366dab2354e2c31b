"""The replay log: which commands ran, how they ended, and the senders' sequence windows.

Strategy: a crash at any byte must leave the log readable as "the old records" or "the old
records plus the new one", never as a misread record, and damage must be handled by refusing
more, never by forgetting (a forgotten command id lets a captured command run twice).

File layout (all integers big-endian)::

    header (24 bytes): b"AMRPLOG1" | committed u64 | zero u32 | crc32 of the 20 bytes before
    record:            length u16 | length ^ 0xFFFF u16 | crc32(payload) u32 | payload

``payload`` is a MessagePack record (`Executed`, `Outcome`, `Window`, `Horizon`). Appending
writes the record at the end, fsyncs it (when durable), then rewrites ``committed`` in the
header; a command runs only after that. So every record a command depends on lies inside
``committed``, and on load:

- bytes past ``committed`` that form complete, valid records are kept (the header write is
  not fsynced, a power cut may lose it); anything else there is a torn append whose command
  never ran, and is dropped;
- a file shorter than ``committed``, a bad header, a record inside ``committed`` that does
  not check out (length check, CRC, MessagePack, UTF-8) is **damage**: the valid records
  before it are kept, the file is moved aside (``replay-log.damaged-<ms>``, never deleted)
  and a fresh log starts with a `Horizon`: commands issued before it are refused, because
  one of them may be a command whose record was lost. The horizon is the start (or the
  damaged file's last write, if later) plus twice the skew allowance (the latest
  ``issued_at_ms`` a lost command can carry), so it ends by itself a minute later.

A missing log in a state directory that was used before (its version file exists) is damage
too. The text log of agent 0.1.0 (``executed-commands``) is imported: intact (every line
well-formed, ending with a newline) it starts a clean log with its ids and expiries; torn or
garbled, its well-formed lines are kept and it is damage like the above.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec

from amora_agent._errors import StateDirError
from amora_agent._persist import atomic_write
from amora_protocol import CommandStatus, RejectReason, SequenceWindow

if TYPE_CHECKING:
    from pathlib import Path

    from amora_protocol import CommandGuard

__all__ = ["HEADER_SIZE", "LOG_FILE", "Executed", "Horizon", "Known", "Outcome", "ReplayLog", "Window", "encode_record"]

LOG_FILE: Final = "replay-log"
_LEGACY_FILE: Final = "executed-commands"
_VERSION_FILE: Final = "state-version"
_MAGIC: Final = b"AMRPLOG1"
_HEADER: Final = struct.Struct(">8sQI")  # magic, committed, zero; then crc32 of these 20 bytes
HEADER_SIZE: Final = _HEADER.size + 4
_FRAME: Final = struct.Struct(">HHI")  # length, length ^ 0xFFFF, crc32(payload)
_MAX_RECORD: Final = 0xFFFF
# Expiry times in the 0.1.0 text log: milliseconds since 1970, 13 digits from 2001 to 2286.
_LEGACY_EXPIRY_DIGITS: Final = 13
# A horizon is only needed while commands issued before it can be alive (10 min by default).
_HORIZON_KEPT_MS: Final = 24 * 3600_000


class Executed(msgspec.Struct, frozen=True, array_like=True, tag="x"):
    """A command accepted to run (written, and made durable, before it runs)."""

    command_id: str
    expires_at_ms: int
    sender: str
    epoch: int
    seq: int
    at_ms: int


class Known(msgspec.Struct, frozen=True, array_like=True, tag="k"):
    """An executed command id carried over by a compaction (its sequence is in a `Window`)."""

    command_id: str
    expires_at_ms: int


class Outcome(msgspec.Struct, frozen=True, array_like=True, tag="o"):
    """How an executed command ended, to repeat to a resend of the same id."""

    command_id: str
    status: CommandStatus
    at_ms: int
    reason: RejectReason | None = None
    message: str | None = None
    state_version: int | None = None


class Window(msgspec.Struct, frozen=True, array_like=True, tag="w"):
    """A sequence window, saved when the log is compacted.

    ``bits`` is the window's bitmap, big-endian (it is wider than MessagePack's integers).
    """

    sender: str
    epoch: int
    highest: int
    bits: bytes

    @classmethod
    def of(cls, saved: SequenceWindow) -> Window:
        """The record for a guard's window."""
        return cls(saved.sender, saved.epoch, saved.highest, saved.bits.to_bytes((saved.bits.bit_length() + 7) // 8))


class Horizon(msgspec.Struct, frozen=True, array_like=True, tag="h"):
    """Commands issued before ``issued_before_ms`` are refused (replay records were lost)."""

    issued_before_ms: int
    cause: str


Record = Executed | Known | Outcome | Window | Horizon
_decoder: Final = msgspec.msgpack.Decoder(Record)
_encoder: Final = msgspec.msgpack.Encoder()


def encode_record(record: Record) -> bytes:
    """One framed record, as appended to the log."""
    payload = _encoder.encode(record)
    if len(payload) > _MAX_RECORD:
        raise ValueError("replay record too large")
    return _FRAME.pack(len(payload), len(payload) ^ 0xFFFF, zlib.crc32(payload)) + payload


def _header(committed: int) -> bytes:
    head = _HEADER.pack(_MAGIC, committed, 0)
    return head + struct.pack(">I", zlib.crc32(head))


class _Damage(Exception):  # noqa: N818 - internal signal, never leaves this module
    def __init__(self, offset: int, what: str) -> None:
        self.offset = offset
        self.what = what
        super().__init__(f"{what} at byte {offset}")


@dataclass(frozen=True, slots=True)
class Entry:
    """What the log knows about one command id."""

    expires_at_ms: int
    outcome: Outcome | None


def _read_record(data: bytes, offset: int) -> tuple[Record, int]:
    if len(data) - offset < _FRAME.size:
        raise _Damage(offset, "truncated record header")
    length, check, crc = _FRAME.unpack_from(data, offset)
    if length ^ 0xFFFF != check:
        raise _Damage(offset, "bad record length")
    end = offset + _FRAME.size + length
    payload = data[offset + _FRAME.size : end]
    if len(payload) < length:
        raise _Damage(offset, "truncated record")
    if zlib.crc32(payload) != crc:
        raise _Damage(offset, "checksum mismatch")
    try:
        return _decoder.decode(payload), end
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _Damage(offset, f"unreadable record ({exc})") from exc


def _parse(data: bytes) -> tuple[list[Record], int, _Damage | None]:
    """The valid records, where they end, and the damage that stopped the reading.

    The damage is None for a clean file or one whose only fault is a torn append.
    """
    if len(data) < HEADER_SIZE:
        return [], HEADER_SIZE, _Damage(0, f"file of {len(data)} bytes is shorter than its header")
    magic, committed, _ = _HEADER.unpack_from(data)
    (crc,) = struct.unpack_from(">I", data, _HEADER.size)
    if magic != _MAGIC or crc != zlib.crc32(data[: _HEADER.size]):
        return [], HEADER_SIZE, _Damage(0, "bad header")
    committed_end = HEADER_SIZE + committed
    records: list[Record] = []
    offset = HEADER_SIZE
    while offset < len(data):
        try:
            record, end = _read_record(data, offset)
        except _Damage as damage:
            # Past the committed length it is an append that never completed: its command
            # never ran. Inside it, the record was acknowledged: it is damage.
            return records, offset, damage if offset < committed_end else None
        records.append(record)
        offset = end
    if len(data) < committed_end:
        missing = committed_end - len(data)
        return records, offset, _Damage(len(data), f"file ends {missing} bytes before its committed length")
    return records, offset, None


def _parse_legacy(data: bytes) -> tuple[list[tuple[str, int]], str | None]:
    """The (id, expiry) lines of a 0.1.0 ``executed-commands`` log, and its first fault.

    0.1.0 appended one ``<id> <expires_at_ms>`` line per command (UTF-8, ending with a
    newline) and compacted by atomic replacement, so an intact file is empty or ends with a
    newline, and every line is a printable id without spaces and a 13-digit millisecond time
    (2001-2286). A cut line fails one of these: it lacks the newline, or its expiry has lost
    digits. The fault is None when the
    whole file reads that way; otherwise the well-formed lines are still returned.
    """
    entries: list[tuple[str, int]] = []
    fault: str | None = None
    if data and not data.endswith(b"\n"):
        fault = "the last line has no newline (cut mid-line)"
    for number, line in enumerate(data.splitlines(), start=1):
        command_id, _, expires = line.partition(b" ")
        try:
            text_id = command_id.decode("utf-8")
        except UnicodeDecodeError:
            text_id = ""
        plausible = len(expires) == _LEGACY_EXPIRY_DIGITS and expires.isdigit() and not expires.startswith(b"0")
        if text_id and text_id.isprintable() and plausible:
            entries.append((text_id, int(expires)))
        elif fault is None:
            fault = f"line {number} is not '<id> <expires_at_ms>'"
    return entries, fault


def _mtime_ms(path: Path) -> int:
    with contextlib.suppress(OSError):
        return path.stat().st_mtime_ns // 1_000_000
    return 0


class ReplayLog:
    """Executed command ids with their outcomes and the sequence windows, crash-safe.

    Policy when full: the id that expires first is forgotten (its protection matters least);
    ``capacity`` should cover the commands a device receives within one command lifetime.

    Args:
        state_dir: Directory of the log (created if missing).
        capacity: Most ids kept.
        durable: fsync each `Executed` record before the command runs (turn off only for
            simulated fleets: a power cut may then forget executed commands).
        max_skew_ms: The clock-skew allowance, for the horizon after damage.
        now_ms: The current time (ms), for the horizon.

    Raises:
        StateDirError: The directory or log cannot be read or written; the message names the
            file and what to do.
    """

    def __init__(  # noqa: PLR0913 - all keyword-only
        self,
        state_dir: Path,
        *,
        guard: CommandGuard,
        capacity: int = 4096,
        durable: bool = True,
        max_skew_ms: int = 30_000,
        now_ms: int,
    ) -> None:
        """Load the log into ``guard`` (handling damage as described in the module docstring)."""
        self.path = state_dir / LOG_FILE
        self._guard = guard
        self._capacity = capacity
        self._durable = durable
        self._max_skew_ms = max_skew_ms
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.horizon: Horizon | None = None
        self.damage: str | None = None
        self._records = 0
        self._end = HEADER_SIZE
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            used_before = (state_dir / _VERSION_FILE).exists()
            data = self.path.read_bytes() if self.path.exists() else None
        except OSError as exc:
            raise StateDirError(f"cannot read the replay log: {exc}", path=str(self.path)) from exc
        if data is None:
            self._start_fresh(state_dir / _LEGACY_FILE, used_before=used_before, now_ms=now_ms)
        else:
            records, self._end, damage = _parse(data)
            for record in records:
                self._apply(record)
            self._records = len(records)
            if damage is not None:
                self._quarantine(
                    f"{self.path} is damaged ({damage})",
                    since_ms=max(_mtime_ms(self.path), self._last_at_ms(records)),
                    now_ms=now_ms,
                    move_aside=True,
                )
        self._fd = self._open()
        try:
            # Drop a torn append past the valid records, and commit what was read.
            os.ftruncate(self._fd, self._end)
        except OSError as exc:
            raise StateDirError(f"cannot truncate the replay log: {exc}", path=str(self.path)) from exc
        self._write_header(self._end - HEADER_SIZE)

    # -- loading ------------------------------------------------------------------------------

    def _start_fresh(self, legacy: Path, *, used_before: bool, now_ms: int) -> None:
        if legacy.exists():
            self._import_legacy(legacy, now_ms=now_ms)
        elif used_before:
            self._quarantine(
                f"{self.path} is missing from a state directory used before",
                since_ms=now_ms,
                now_ms=now_ms,
                move_aside=False,
            )
        else:
            self._rewrite()

    def _import_legacy(self, legacy: Path, *, now_ms: int) -> None:
        try:
            data = legacy.read_bytes()
        except OSError as exc:
            raise StateDirError(f"cannot read the old executed-commands log: {exc}", path=str(legacy)) from exc
        entries, fault = _parse_legacy(data)
        for command_id, expires_at_ms in entries:
            self._apply(Known(command_id, expires_at_ms))
        if fault is None:
            # Read in full: every id the old agent recorded (before running its command) is
            # kept with its expiry. 0.1.0 kept no sequence windows on disk, so none are lost
            # here: a replay of any unexpired command is refused by its id, an expired one by
            # its expiry, which is all a restart of 0.1.0 itself relied on.
            self._rewrite()
        else:
            # The old format could be cut mid-line (a cut expiry reads as 1970 and the id would
            # be pruned): keep what parses, and treat the rest of its lifetime as damaged.
            self._quarantine(
                f"{legacy} (the previous format) was imported with damage ({fault})",
                since_ms=_mtime_ms(legacy),
                now_ms=now_ms,
                move_aside=False,
            )
        try:
            legacy.replace(legacy.with_name(f"{legacy.name}.imported"))
        except OSError as exc:
            raise StateDirError(f"cannot rename the imported log: {exc}", path=str(legacy)) from exc

    def _quarantine(self, cause: str, *, since_ms: int, now_ms: int, move_aside: bool) -> None:
        # A lost record was written before now (and before the file's last write); its
        # command was issued at most 2 x skew later on its sender's clock (the allowance for
        # future dating plus the per-sender clock correction).
        before = max(since_ms, now_ms) + 2 * self._max_skew_ms
        if self.horizon is None or before > self.horizon.issued_before_ms:
            self.horizon = Horizon(issued_before_ms=before, cause=cause[:500])
        self.damage = cause
        if move_aside:
            aside = self.path.with_name(f"{self.path.name}.damaged-{now_ms}")
            try:
                self.path.replace(aside)
            except OSError as exc:
                raise StateDirError(
                    f"replay log damaged and cannot be moved aside ({exc}); move it away by hand"
                    " and start again (commands issued before the restart will be refused for a while)",
                    path=str(self.path),
                ) from exc
            self.damage = f"{cause}; kept as {aside.name}"
        self._rewrite()

    @staticmethod
    def _last_at_ms(records: list[Record]) -> int:
        return max((r.at_ms for r in records if isinstance(r, Executed | Outcome)), default=0)

    def _apply(self, record: Record) -> None:
        guard = self._guard
        if isinstance(record, Executed | Known):
            self._remember(record.command_id, record.expires_at_ms, None)
            guard.remember([(record.command_id, record.expires_at_ms)])
            if isinstance(record, Executed):
                guard.note_sequence(record.sender, record.epoch, record.seq)
        elif isinstance(record, Outcome):
            entry = self._entries.get(record.command_id)
            if entry is not None:
                self._entries[record.command_id] = Entry(entry.expires_at_ms, record)
        elif isinstance(record, Window):
            bits = int.from_bytes(record.bits)
            guard.restore_windows(
                [SequenceWindow(sender=record.sender, epoch=record.epoch, highest=record.highest, bits=bits)]
            )
        elif self.horizon is None or record.issued_before_ms > self.horizon.issued_before_ms:
            self.horizon = record

    # -- queries ------------------------------------------------------------------------------

    def __contains__(self, command_id: object) -> bool:
        """Whether ``command_id`` is remembered as executed."""
        return command_id in self._entries

    def __len__(self) -> int:
        """How many ids are remembered."""
        return len(self._entries)

    def outcome(self, command_id: str) -> Outcome | None:
        """The recorded outcome of ``command_id`` (None: unknown or still running)."""
        entry = self._entries.get(command_id)
        return entry.outcome if entry is not None else None

    def refuses(self, issued_at_ms: int) -> bool:
        """Whether a command issued at ``issued_at_ms`` falls before the damage horizon."""
        horizon = self.horizon
        return horizon is not None and issued_at_ms < horizon.issued_before_ms

    # -- writing ------------------------------------------------------------------------------

    def record_executed(self, record: Executed) -> None:
        """Make ``record`` durable; the command may run once this returns.

        Raises:
            StateDirError: It could not be written (e.g. the disk is full): do not run it.
        """
        self._prune(record.at_ms)
        self._append(encode_record(record), sync=self._durable)
        self._remember(record.command_id, record.expires_at_ms, None)

    def record_outcome(self, outcome: Outcome) -> None:
        """Remember how a command ended.

        Not fsynced: losing it only turns a resend's answer into ``duplicate``.

        Raises:
            StateDirError: It could not be written.
        """
        entry = self._entries.get(outcome.command_id)
        if entry is None:
            return
        self._entries[outcome.command_id] = Entry(entry.expires_at_ms, outcome)
        self._append(encode_record(outcome), sync=False)

    def compact(self, *, now_ms: int) -> bool:
        """Rewrite the log to the live records when it has grown past three times the bound.

        Returns:
            Whether it was rewritten.
        """
        if self._records <= 3 * self._capacity:
            return False
        self._prune(now_ms)
        os.close(self._fd)
        self._rewrite(now_ms=now_ms)
        self._fd = self._open()
        return True

    def _append(self, frame: bytes, *, sync: bool) -> None:
        try:
            written = os.pwrite(self._fd, frame, self._end)
            if written != len(frame):
                raise OSError(f"short write ({written} of {len(frame)} bytes)")  # noqa: TRY301
            if sync:
                os.fsync(self._fd)
            self._end += len(frame)
            self._write_header(self._end - HEADER_SIZE)
        except OSError as exc:
            # Nothing past the committed length counts: the next append overwrites it.
            raise StateDirError(f"cannot append to the replay log: {exc}", path=str(self.path)) from exc
        self._records += 1

    def _write_header(self, committed: int) -> None:
        try:
            os.pwrite(self._fd, _header(committed), 0)
        except OSError as exc:
            raise StateDirError(f"cannot update the replay log header: {exc}", path=str(self.path)) from exc

    def _rewrite(self, *, now_ms: int | None = None) -> None:
        frames: list[bytes] = []
        horizon = self.horizon
        if horizon is not None and (now_ms is None or horizon.issued_before_ms > now_ms - _HORIZON_KEPT_MS):
            frames.append(encode_record(horizon))
        frames += [encode_record(Window.of(w)) for w in self._guard.windows()]
        for cid, entry in self._entries.items():
            frames.append(encode_record(Known(cid, entry.expires_at_ms)))
            if entry.outcome is not None:
                frames.append(encode_record(entry.outcome))
        body = b"".join(frames)
        atomic_write(self.path, _header(len(body)) + body)
        self._records = len(frames)
        self._end = HEADER_SIZE + len(body)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateDirError(f"cannot open the replay log: {exc}", path=str(self.path)) from exc

    # -- memory -------------------------------------------------------------------------------

    def _remember(self, command_id: str, expires_at_ms: int, outcome: Outcome | None) -> None:
        self._entries[command_id] = Entry(expires_at_ms, outcome)
        self._entries.move_to_end(command_id)
        while len(self._entries) > self._capacity:
            oldest = min(self._entries, key=lambda cid: self._entries[cid].expires_at_ms)
            del self._entries[oldest]

    def _prune(self, now_ms: int) -> None:
        # Kept for the skew allowance past expiry, like the guard: a device whose clock is
        # corrected still refuses the id while it could be accepted.
        limit = now_ms - 2 * self._max_skew_ms
        expired = [cid for cid, entry in self._entries.items() if entry.expires_at_ms < limit]
        for cid in expired:
            del self._entries[cid]

    def close(self) -> None:
        """Close the file."""
        with contextlib.suppress(OSError):
            os.close(self._fd)
