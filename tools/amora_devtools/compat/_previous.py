"""Previous releases rebuilt from their recorded commits, each in a venv of its own."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.utils import canonicalize_name

from amora_devtools._errors import DevtoolsError
from amora_devtools.release._build import clean_env
from amora_devtools.release._record import Release, latest

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["CACHE_DIR", "PreviousEnv", "build_previous_wheels", "previous_env", "previous_release", "probe"]

CACHE_DIR = ".compat-cache"
_PROBES = Path(__file__).resolve().parent
_PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"


def probe(name: str) -> Path:
    """The path of a probe script shipped here (``vectors_check.py``, ``sdk_scenario.py``)."""
    path = _PROBES / name
    if not path.is_file():
        raise DevtoolsError(f"no compat probe {name!r} in {_PROBES}")
    return path


def previous_release(root: Path, distribution: str) -> Release:
    """The latest recorded release of ``distribution``.

    Raises:
        DevtoolsError: It was never released (cut one with ``tools/dev release DIST first``).
    """
    release = latest(root, distribution)
    if release is None:
        raise DevtoolsError(
            f"{distribution} has no release in releases.toml: the compatibility suite needs one"
            f" (tools/dev release {distribution} first)"
        )
    return release


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (two test processes may build the same cache entry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: Sequence[str], *, cwd: Path | None = None, what: str) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=clean_env(), check=False)  # noqa: S603 - fixed argv
    if done.returncode != 0:
        raise DevtoolsError(f"{what} failed ({' '.join(argv)}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}")


def build_previous_wheels(root: Path, commit: str, distributions: Sequence[str]) -> dict[str, Path]:
    """Wheels of ``distributions`` as they were at ``commit`` (cached by commit).

    Builds in a temporary ``git worktree`` of the commit with ``hatch build -t wheel``, so
    nothing of the current tree leaks into a previous release.

    Raises:
        DevtoolsError: The commit is missing (a shallow clone: fetch with full history) or a build failed.
    """
    cache = root / CACHE_DIR / "wheels" / commit
    wanted = {d: canonicalize_name(d).replace("-", "_") for d in distributions}

    def cached() -> dict[str, Path]:
        found: dict[str, Path] = {}
        for dist, stem in wanted.items():
            wheels = sorted(cache.glob(f"{stem}-*.whl"))
            if wheels:
                found[dist] = wheels[-1]
        return found

    with _locked(root / CACHE_DIR / f"wheels-{commit}.lock"):
        have = cached()
        missing = [d for d in distributions if d not in have]
        if not missing:
            return have
        probe_commit = subprocess.run(  # noqa: S603 - fixed argv
            ["git", "-C", str(root), "cat-file", "-e", f"{commit}^{{commit}}"],  # noqa: S607 - git from PATH
            capture_output=True,
            check=False,
        )
        if probe_commit.returncode != 0:
            raise DevtoolsError(
                f"commit {commit} (releases.toml) is not in this clone; fetch the full history"
                " (git fetch --unshallow, or actions/checkout with fetch-depth: 0)"
            )
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="amora-compat-") as tmp:
            tree = Path(tmp) / "tree"
            # A run killed mid-build leaves a stale worktree entry behind; forget those first.
            _run(["git", "-C", str(root), "worktree", "prune"], what="git worktree prune")
            _run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), commit], what="git worktree add")
            try:
                for dist in missing:
                    folder = tree / "packages" / dist
                    out = Path(tmp) / f"out-{dist}"
                    _run(
                        ["hatch", "build", "-t", "wheel", str(out)],
                        cwd=folder,
                        what=f"hatch build of {dist} at {commit[:12]}",
                    )
                    for wheel in out.glob("*.whl"):
                        shutil.copy2(wheel, cache / wheel.name)
            finally:
                _run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], what="git worktree remove")
        have = cached()
    if missing := [d for d in distributions if d not in have]:
        raise DevtoolsError(f"no wheel of {missing} was built at {commit[:12]}")
    return have


@dataclass(frozen=True)
class PreviousEnv:
    """A venv holding a previous release (and the siblings built from the same commit)."""

    release: Release
    directory: Path

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return self.directory / "bin" / "python"

    def script(self, name: str) -> Path:
        """A console script installed in the venv (``amora-agent``, ``amora``)."""
        return self.directory / "bin" / name

    def run(self, script: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with the venv's interpreter, isolated from the caller's PYTHONPATH."""
        env = {k: v for k, v in clean_env().items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
        return subprocess.run(  # noqa: S603 - fixed argv
            [str(self.python), str(script), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )


def previous_env(root: Path, distribution: str, *, siblings: Sequence[str] = ("amora-protocol",)) -> PreviousEnv:
    """A venv with the latest release of ``distribution`` built from its recorded commit.

    The siblings it needs come from the same commit: that is the code it was released and
    tested with. Third-party dependencies resolve from the package index as for any user.

    Raises:
        DevtoolsError: Never released, commit missing, or a build or install failed.
    """
    release = previous_release(root, distribution)
    names = [distribution, *(s for s in siblings if s != distribution)]
    key = f"{distribution}-{release.version}-{release.commit[:12]}-{_PY_TAG}"
    directory = root / CACHE_DIR / "venvs" / key
    marker = directory / ".complete"
    with _locked(root / CACHE_DIR / f"venv-{key}.lock"):
        if not (marker.is_file() and (directory / "bin" / "python").exists()):
            wheels = build_previous_wheels(root, release.commit, names)
            shutil.rmtree(directory, ignore_errors=True)
            # virtualenv, not the stdlib venv: Debian's python3 lacks ensurepip without python3-venv.
            _run([sys.executable, "-m", "virtualenv", "--quiet", str(directory)], what="virtualenv")
            pip = [str(directory / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            _run([*pip, *(str(wheels[n]) for n in names)], what=f"pip install of {distribution} {release.version}")
            marker.write_text(f"{release.commit}\n")
    return PreviousEnv(release, directory)
