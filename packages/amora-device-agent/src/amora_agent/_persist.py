"""State versions that survive restarts, and the atomic file replacement the state directory uses.

(Executed commands live in the replay log, `amora_agent._replaylog`.)

Strategy: nothing here may make a version go backwards or let a command run twice,
even after a crash (power cut on a player). So every write goes to a temporary file
that is fsync'ed and renamed over the old one, and the version counter reserves
*blocks*: the file holds a ceiling that is written before any version under it is
handed out. A crash loses at most the unused rest of a block, never uniqueness.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from amora_agent._errors import StateDirError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["VersionCounter", "atomic_write"]

_VERSION_FILE: Final = "state-version"


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
