"""The few git operations a release needs, run as ``git -C ROOT ...`` subprocesses."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from amora_devtools.release._errors import ReleaseError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["commit", "dirty_paths", "git", "head", "tag", "tag_exists"]


def git(root: Path, *args: str) -> str:
    """Run ``git -C root ARGS``; return its stdout without the trailing newline.

    Raises:
        ReleaseError: git exited non-zero (its stderr is in the message).
    """
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)  # noqa: S603, S607 - git from PATH, fixed argv
    if done.returncode != 0:
        raise ReleaseError(f"git {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.rstrip("\n")


def dirty_paths(root: Path) -> list[str]:
    """Tracked changes and untracked files that are not ignored (``git status --porcelain``)."""
    return [line for line in git(root, "status", "--porcelain").splitlines() if line.strip()]


def head(root: Path) -> str:
    """The full hash of HEAD."""
    return git(root, "rev-parse", "HEAD")


def tag_exists(root: Path, name: str) -> bool:
    """Whether a tag called ``name`` exists."""
    return bool(git(root, "tag", "--list", name))


def commit(root: Path, paths: list[str], message: str) -> str:
    """Commit exactly ``paths`` with ``message``; return the new commit's hash."""
    git(root, "add", "--", *paths)
    git(root, "commit", "--quiet", "-m", message, "--", *paths)
    return head(root)


def tag(root: Path, name: str, target: str, message: str) -> None:
    """Create the annotated tag ``name`` on ``target``."""
    git(root, "tag", "-a", name, target, "-m", message)
