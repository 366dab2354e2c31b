"""Files that hold secrets (private keys, passwords, tokens): 0600 from the first byte, in 0700 folders.

Never written and then chmod-ed: between the two, anyone on the machine could read the
file. A temporary file is created with mode 0600 (``O_EXCL``: never an old file with wider
rights), filled, and renamed over the target, so readers also never see half a file.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "private_dir", "write_private"]

PRIVATE_FILE_MODE: Final = 0o600
PRIVATE_DIR_MODE: Final = 0o700


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) and make it 0700, also when it already existed."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask, and an old folder keeps its own
    return path


def write_private(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` with mode 0600 from the first byte, atomically."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(raw)
    tmp.replace(path)
    return path
