"""Build a distribution's wheel and sdist with hatch, in its folder's ``dist/``."""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

from amora_devtools.release._errors import ReleaseError

if TYPE_CHECKING:
    from pathlib import Path

    from amora_devtools.release._project import Distribution

__all__ = ["build", "clean_env", "hatch_version"]


def clean_env() -> dict[str, str]:
    """This process's environment without the markers of an active hatch environment.

    ``tools/dev release`` runs inside ``hatch run``; a nested ``hatch`` would otherwise
    think it is already inside the workspace environment and refuse or misbehave.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(("HATCH_ENV", "VIRTUAL_ENV"))}


def _hatch(folder: Path, *args: str) -> str:
    done = subprocess.run(  # noqa: S603 - fixed argv
        ["hatch", *args],  # noqa: S607 - hatch from PATH, as tools/dev installs it
        cwd=folder,
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    if done.returncode != 0:
        raise ReleaseError(f"hatch {' '.join(args)} in {folder} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def hatch_version(folder: Path, bump: str | None = None) -> str:
    """The distribution's version after ``hatch version BUMP`` (just read it when ``bump`` is None)."""
    if bump is not None:
        _hatch(folder, "version", bump)
    return _hatch(folder, "version").splitlines()[-1].strip()


def build(dist: Distribution, version: str) -> tuple[Path, Path]:
    """``hatch build -t wheel -t sdist`` in the distribution's folder; return (wheel, sdist).

    Earlier artefacts of the same version are removed first so a stale file is never checked.

    Raises:
        ReleaseError: hatch failed or did not write the expected files.
    """
    wheel = dist.dist_dir / f"{dist.file_stem}-{version}-py3-none-any.whl"
    sdist = dist.dist_dir / f"{dist.file_stem}-{version}.tar.gz"
    for old in (wheel, sdist):
        old.unlink(missing_ok=True)
    _hatch(dist.folder, "build", "-t", "wheel", "-t", "sdist")
    for path in (wheel, sdist):
        if not path.is_file():
            raise ReleaseError(f"hatch build did not write {path}")
    return wheel, sdist
