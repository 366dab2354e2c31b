"""What the agent keeps in its state directory across restarts.

Strategy: nothing here may make a version go backwards or let a command run twice,
even after a crash (power cut on a player). So every write goes to a temporary file
that is fsync'ed and renamed over the old one, and the version counter reserves
*blocks*: the file holds a ceiling that is written before any version under it is
handed out. A crash loses at most the unused rest of a block, never uniqueness.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Final

from amora_agent._errors import StateDirError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ExecutedCommands", "VersionCounter", "atomic_write"]

_VERSION_FILE: Final = "state-version"
_EXECUTED_FILE: Final = "executed-commands"


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content.

    Raises:
        StateDirError: The file or its directory cannot be written.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        # The rename is durable only once the directory entry is on disk.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StateDirError(str(exc), path=str(path)) from exc


class VersionCounter:
    """Strictly increasing state versions, across restarts, with one fsync per block.

    Args:
        state_dir: Directory that holds the counter file (created if missing).
        block: How many versions one write reserves.
        floor: Lowest version to hand out (e.g. a wall-clock based start, so that a
            lost state directory still yields versions newer than before).
    """

    def __init__(self, state_dir: Path, *, block: int = 1000, floor: int = 0) -> None:
        """Open the counter, reserving the first block above the persisted ceiling."""
        if block < 1:
            raise ValueError("block must be positive")
        self._path = state_dir / _VERSION_FILE
        self._block = block
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            text = self._path.read_text(encoding="ascii").strip() if self._path.exists() else "0"
            ceiling = int(text or "0")
        except (OSError, ValueError) as exc:
            raise StateDirError(f"cannot read the version ceiling: {exc}", path=str(self._path)) from exc
        self._next = max(ceiling, floor) + 1
        self._ceiling = self._next - 1
        self._reserve()

    def _reserve(self) -> None:
        self._ceiling = self._next - 1 + self._block
        atomic_write(self._path, f"{self._ceiling}\n".encode("ascii"))

    @property
    def last(self) -> int:
        """The last version handed out (0 before the first)."""
        return self._next - 1

    def next(self) -> int:
        """Return a version greater than every one handed out before, in any process run.

        Raises:
            StateDirError: A new block could not be reserved.
        """
        if self._next > self._ceiling:
            self._reserve()
        version = self._next
        self._next += 1
        return version


class ExecutedCommands:
    """The ids of executed commands, kept until they expire, bounded, and persisted.

    A command id only has to be remembered until the command's expiry: after that the
    expiry check rejects it anyway. Ids are recorded *before* the command runs (at most
    once: a crash in between loses that command rather than running it twice).

    Storage: an append-only log (one ``id expires_at_ms`` line per command, fsync'ed),
    compacted to the live entries when it grows past twice the bound.

    Policy when full: the entry that expires first is forgotten (it is the one whose
    protection matters least); `capacity` should cover the commands a device can receive
    within one command lifetime.

    Args:
        state_dir: Directory that holds the log (created if missing).
        capacity: Most ids kept at once.
        durable: fsync each append (turn off only for simulated fleets).
    """

    def __init__(self, state_dir: Path, *, capacity: int = 4096, durable: bool = True) -> None:
        """Load the ids persisted by earlier runs."""
        self._path = state_dir / _EXECUTED_FILE
        self._capacity = capacity
        self._durable = durable
        self._entries: OrderedDict[str, int] = OrderedDict()
        self._lines = 0
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            if self._path.exists():
                for line in self._path.read_text(encoding="utf-8").splitlines():
                    self._lines += 1
                    command_id, _, expires = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        self._remember(command_id, int(expires))
        except OSError as exc:
            raise StateDirError(f"cannot read executed commands: {exc}", path=str(self._path)) from exc
        self._log = self._open_log()

    def _open_log(self) -> int:
        try:
            return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateDirError(str(exc), path=str(self._path)) from exc

    def _remember(self, command_id: str, expires_at_ms: int) -> None:
        if not command_id or " " in command_id or "\n" in command_id:
            return
        self._entries[command_id] = expires_at_ms
        self._entries.move_to_end(command_id)
        while len(self._entries) > self._capacity:
            oldest = min(self._entries, key=self._entries.__getitem__)
            del self._entries[oldest]

    def __contains__(self, command_id: object) -> bool:
        """Whether ``command_id`` was executed and is still remembered."""
        return command_id in self._entries

    def __len__(self) -> int:
        """How many ids are remembered."""
        return len(self._entries)

    def items(self) -> list[tuple[str, int]]:
        """The remembered (command id, expires_at_ms) pairs, oldest first."""
        return list(self._entries.items())

    def add(self, command_id: str, expires_at_ms: int, *, now_ms: int) -> None:
        """Record ``command_id`` as executed, durably, before it runs.

        Raises:
            StateDirError: The log cannot be written.
        """
        self.prune(now_ms)
        self._remember(command_id, expires_at_ms)
        line = f"{command_id} {expires_at_ms}\n".encode()
        try:
            os.write(self._log, line)
            if self._durable:
                os.fsync(self._log)
        except OSError as exc:
            raise StateDirError(str(exc), path=str(self._path)) from exc
        self._lines += 1
        if self._lines > 2 * self._capacity:
            self._compact()

    def prune(self, now_ms: int) -> None:
        """Forget the ids whose commands have expired by ``now_ms``."""
        expired = [cid for cid, exp in self._entries.items() if exp < now_ms]
        for cid in expired:
            del self._entries[cid]

    def _compact(self) -> None:
        data = "".join(f"{cid} {exp}\n" for cid, exp in self._entries.items()).encode()
        os.close(self._log)
        atomic_write(self._path, data)
        self._lines = len(self._entries)
        self._log = self._open_log()

    def close(self) -> None:
        """Close the log file."""
        with contextlib.suppress(OSError):
            os.close(self._log)
