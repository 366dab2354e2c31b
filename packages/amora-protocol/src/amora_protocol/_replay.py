"""Replay protection for commands and ordering for states, with bounded memory."""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import TYPE_CHECKING

import msgspec

from amora_protocol._errors import ClockSkew, Expired, Replayed, SchemaError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from amora_protocol._envelope import Header
    from amora_protocol._messages import Command

__all__ = ["CommandGuard", "Freshness", "SequenceWindow", "StateTracker"]


class SequenceWindow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One (sender, epoch)'s anti-replay window, for persisting it across restarts.

    Attributes:
        sender: The envelope sender (an app's session id).
        epoch: The sender's epoch.
        highest: The highest sequence number seen.
        bits: Bit ``i`` set: ``highest - i`` was seen.
    """

    sender: str
    epoch: int
    highest: int
    bits: int


class _SeqWindow:
    """Sliding window over one (sender, epoch)'s sequence numbers (like IPsec's anti-replay)."""

    __slots__ = ("bits", "highest")

    def __init__(self, seq: int) -> None:
        self.highest = seq
        self.bits = 1  # bit i set: seq (highest - i) was seen

    def accept(self, seq: int, size: int) -> bool:
        if seq > self.highest:
            shift = seq - self.highest
            self.bits = ((self.bits << shift) | 1) & ((1 << size) - 1) if shift < size else 1
            self.highest = seq
            return True
        offset = self.highest - seq
        if offset >= size or self.bits >> offset & 1:
            return False
        self.bits |= 1 << offset
        return True


class CommandGuard:
    """Rejects expired, future-dated and replayed commands; remembers what it accepted.

    Memory is bounded: at most ``max_ids`` command ids (each forgotten once its command has
    expired, oldest first when full) and ``max_senders`` sequence windows (least recently
    used evicted). Command lifetimes are capped at ``max_ttl_ms`` so an id never needs to be
    remembered longer than that.

    Args:
        max_skew_ms: How far in the future a timestamp may be.
        max_ttl_ms: The longest allowed ``expires_at_ms - issued_at_ms``.
        max_ids: How many command ids to remember.
        max_senders: How many (sender, epoch) windows to keep.
        window: How many sequence numbers below the highest seen are still accepted once.
    """

    def __init__(
        self,
        *,
        max_skew_ms: int = 30_000,
        max_ttl_ms: int = 10 * 60_000,
        max_ids: int = 100_000,
        max_senders: int = 10_000,
        window: int = 1024,
    ) -> None:
        """Create an empty guard."""
        self.max_skew_ms = max_skew_ms
        self.max_ttl_ms = max_ttl_ms
        self.max_ids = max_ids
        self.max_senders = max_senders
        self.window = window
        self._ids: OrderedDict[str, int] = OrderedDict()  # command id -> forget after (ms)
        self._windows: OrderedDict[tuple[str, int], _SeqWindow] = OrderedDict()

    def __len__(self) -> int:
        """How many command ids are remembered."""
        return len(self._ids)

    def seen(self, command_id: str) -> bool:
        """Whether ``command_id`` was accepted before (and is still remembered)."""
        return command_id in self._ids

    def forget(self, command_id: str) -> None:
        """Forget an accepted id whose command could not run after all (it may come again)."""
        self._ids.pop(command_id, None)

    def remember(self, ids: Iterable[tuple[str, int]]) -> None:
        """Load (command id, expires_at_ms) pairs, e.g. persisted across a restart."""
        for command_id, expires_at_ms in ids:
            self._remember(command_id, expires_at_ms)

    def remembered(self) -> list[tuple[str, int]]:
        """The (command id, expires_at_ms) pairs held, oldest first, for persisting."""
        return [(cid, until - self.max_skew_ms) for cid, until in self._ids.items()]

    def windows(self) -> list[SequenceWindow]:
        """The sequence windows held, least recently used first, for persisting."""
        return [
            SequenceWindow(sender=sender, epoch=epoch, highest=w.highest, bits=w.bits)
            for (sender, epoch), w in self._windows.items()
        ]

    def restore_windows(self, windows: Iterable[SequenceWindow]) -> None:
        """Load windows saved with `windows` (a later one for the same sender replaces it)."""
        mask = (1 << self.window) - 1
        for saved in windows:
            window = _SeqWindow(saved.highest)
            window.bits = (saved.bits & mask) | 1
            self._windows[saved.sender, saved.epoch] = window
            self._windows.move_to_end((saved.sender, saved.epoch))
        while len(self._windows) > self.max_senders:
            self._windows.popitem(last=False)

    def note_sequence(self, sender: str, epoch: int, seq: int) -> None:
        """Mark ``seq`` of (sender, epoch) as used, e.g. replaying a persisted record."""
        key = (sender, epoch)
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = _SeqWindow(seq)
            while len(self._windows) > self.max_senders:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
            window.accept(seq, self.window)

    def check(self, header: Header, command: Command, *, now_ms: int, clock_offset_ms: int = 0) -> None:
        """Accept the command once, or raise.

        Args:
            header: The verified envelope header.
            command: The verified command.
            now_ms: The verifier's clock.
            clock_offset_ms: The verifier's clock minus the sender's, as far as known (see the
                README, "Clock skew"); clamped to ``max_skew_ms`` either way. Expiry and
                future dating are judged on ``now_ms - clock_offset_ms``.

        Raises:
            Expired: At or past the command's (or envelope's) expiry.
            ClockSkew: Dated more than ``max_skew_ms`` in the future, or expired by more than
                the allowance explains: the clocks differ (``offset_ms`` says by how much).
            SchemaError: A lifetime longer than ``max_ttl_ms``.
            Replayed: The command id, or (sender, epoch, seq), was seen before.
        """
        skew = self.max_skew_ms
        # Ids are kept until expiry + skew as seen by the most lenient sender time allowed.
        self._forget_expired(now_ms - skew)
        sender_now = now_ms - max(-skew, min(skew, clock_offset_ms))
        measured = now_ms - header.ts_ms
        expiry = min(command.expires_at_ms, header.exp_ms if header.exp_ms is not None else command.expires_at_ms)
        if sender_now >= expiry:
            if abs(measured) > skew:
                raise ClockSkew(
                    f"command {command.id} expired: clocks differ by {measured} ms (allowance {skew} ms)",
                    offset_ms=measured,
                )
            raise Expired(f"command {command.id}", expiry, sender_now)
        latest = max(command.issued_at_ms, header.ts_ms)
        if latest > sender_now + skew or measured < -skew:
            raise ClockSkew(
                f"command {command.id} is dated {latest - now_ms} ms in the future (allowance {skew} ms)",
                offset_ms=measured,
            )
        if command.expires_at_ms - command.issued_at_ms > self.max_ttl_ms:
            raise SchemaError(f"command {command.id} lives longer than {self.max_ttl_ms} ms")
        if command.id in self._ids:
            raise Replayed(f"command id {command.id} was already seen")
        key = (header.sender, header.epoch)
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = _SeqWindow(header.seq)
            while len(self._windows) > self.max_senders:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
            if not window.accept(header.seq, self.window):
                who = f"{header.sender}/{header.epoch}"
                raise Replayed(f"sequence {header.seq} of {who} was already seen or is too old")
        self._remember(command.id, command.expires_at_ms)

    def _remember(self, command_id: str, expires_at_ms: int) -> None:
        self._ids[command_id] = expires_at_ms + self.max_skew_ms
        while len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)

    def _forget_expired(self, now_ms: int) -> None:
        # Ids arrive roughly in expiry order; stop at the first one still needed.
        ids = self._ids
        while ids:
            first = next(iter(ids))
            if ids[first] > now_ms:
                break
            del ids[first]


class Freshness(enum.StrEnum):
    """How a state's version compares with the newest one held."""

    NEWER = "newer"
    DUPLICATE = "duplicate"
    STALE = "stale"


class StateTracker:
    """Keeps the newest state version per device; says whether another one is worth delivering."""

    __slots__ = ("_versions",)

    def __init__(self) -> None:
        """Create an empty tracker."""
        self._versions: dict[str, int] = {}

    def observe(self, device_id: str, version: int) -> Freshness:
        """Record ``version`` for ``device_id`` if newer, and say how it compares."""
        held = self._versions.get(device_id)
        if held is None or version > held:
            self._versions[device_id] = version
            return Freshness.NEWER
        return Freshness.DUPLICATE if version == held else Freshness.STALE

    def current(self, device_id: str) -> int | None:
        """The newest version seen for ``device_id``, if any."""
        return self._versions.get(device_id)

    def forget(self, device_id: str) -> None:
        """Drop what is held for ``device_id`` (e.g. when access to it ends)."""
        self._versions.pop(device_id, None)
