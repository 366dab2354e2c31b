"""Checks on a built wheel and sdist before anything is tagged or published.

Two well-kept checkers run first — ``twine check --strict`` (metadata, the long description
renders on PyPI) and ``check-wheel-contents`` (duplicates, stray top-level files, modules in
the wrong place) — then the project's own rules, which neither covers: ``py.typed`` in every
package, licence files present and named in the metadata, no tests or build debris in the
wheel, the console scripts that ``pyproject.toml`` declares.
"""

from __future__ import annotations

import email.parser
import email.policy
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from amora_devtools.release._project import Distribution

__all__ = ["check_artefacts", "check_sdist", "check_wheel", "run_checkers"]

_DEBRIS_NAMES = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hatch", ".git", ".DS_Store"}
_DEBRIS_SUFFIXES = (".pyc", ".pyo", ".orig", ".rej", ".swp")


def _is_test_path(parts: tuple[str, ...]) -> bool:
    name = parts[-1]
    return (
        any(p in {"tests", "test", "testing_data"} for p in parts[:-1])
        or name == "conftest.py"
        or (name.startswith("test_") and name.endswith(".py"))
    )


def _is_debris(parts: tuple[str, ...]) -> bool:
    return any(p in _DEBRIS_NAMES for p in parts) or parts[-1].endswith(_DEBRIS_SUFFIXES)


def check_wheel(wheel: Path, dist: Distribution, version: str) -> list[str]:  # noqa: C901, PLR0912 - one flat list of rules
    """The project's own rules for a wheel; returns the problems found (empty when fine)."""
    problems: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        info_dir = f"{dist.file_stem}-{version}.dist-info"
        if f"{info_dir}/METADATA" not in names:
            return [f"{wheel.name}: no {info_dir}/METADATA (wrong name or version?)"]
        meta = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(zf.read(f"{info_dir}/METADATA"))
        entry_points = (
            zf.read(f"{info_dir}/entry_points.txt").decode() if f"{info_dir}/entry_points.txt" in names else ""
        )
    if meta["Name"] != dist.name or meta["Version"] != version:
        problems.append(f"METADATA says {meta['Name']} {meta['Version']}, expected {dist.name} {version}")
    if not meta["Requires-Python"]:
        problems.append("METADATA has no Requires-Python")
    if meta["Description-Content-Type"] != "text/markdown" or not str(meta.get_payload()).strip():
        problems.append('METADATA has no Markdown long description (readme = "README.md" in pyproject.toml)')
    if not meta["License-Expression"]:
        problems.append('METADATA has no License-Expression (license = "MIT" in pyproject.toml)')
    license_files = [n for n in names if n.startswith(f"{info_dir}/licenses/")]
    if not license_files or not meta.get_all("License-File"):
        problems.append("no licence file in the wheel (add LICENSE next to pyproject.toml)")
    packages = sorted({n.split("/")[0] for n in names if not n.startswith(info_dir)})
    for top in packages:
        if f"{top}/__init__.py" not in names:
            problems.append(f"stray top-level entry {top!r} (only the import package belongs there)")
        elif f"{top}/py.typed" not in names:
            problems.append(f"{top}/py.typed missing: type checkers would ignore the package's annotations")
    for name in names:
        parts = PurePosixPath(name).parts
        if _is_test_path(parts):
            problems.append(f"test file in the wheel: {name}")
        elif _is_debris(parts):
            problems.append(f"build debris in the wheel: {name}")
    scripts = tomllib.loads(dist.pyproject.read_text()).get("project", {}).get("scripts", {})
    for script, target in scripts.items():
        if f"{script} = {target}" not in entry_points:
            problems.append(f"console script {script} = {target} missing from entry_points.txt")
    return problems


def check_sdist(sdist: Path, dist: Distribution, version: str) -> list[str]:
    """The project's own rules for an sdist; returns the problems found."""
    problems: list[str] = []
    prefix = f"{dist.file_stem}-{version}"
    with tarfile.open(sdist) as tf:
        names = [m.name for m in tf.getmembers() if m.isfile()]
    needed = ("PKG-INFO", "pyproject.toml", "README.md")
    problems.extend(f"{sdist.name}: {prefix}/{n} missing" for n in needed if f"{prefix}/{n}" not in names)
    if not any(PurePosixPath(n).name.startswith(("LICENSE", "LICENCE", "COPYING")) for n in names):
        problems.append(f"{sdist.name}: no licence file")
    problems.extend(f"build debris in the sdist: {n}" for n in names if _is_debris(PurePosixPath(n).parts))
    problems.extend(f"{sdist.name}: {n} is outside {prefix}/" for n in names if not n.startswith(prefix + "/"))
    return problems


def run_checkers(wheel: Path, sdist: Path, *, cwd: Path | None = None) -> list[str]:
    """``twine check --strict`` on both, ``check-wheel-contents`` on the wheel; their output on failure.

    ``cwd`` is the package folder: check-wheel-contents reads a package's own settings from
    ``[tool.check-wheel-contents]`` in the ``pyproject.toml`` there.
    """
    problems: list[str] = []
    commands = {
        "twine check --strict": [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
        "check-wheel-contents": [sys.executable, "-m", "check_wheel_contents", str(wheel)],
    }
    for label, argv in commands.items():
        done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False)  # noqa: S603 - fixed argv
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().replace("\n", "\n    ")
            problems.append(f"{label} failed:\n    {output}")
    return problems


def check_artefacts(wheel: Path, sdist: Path, dist: Distribution, version: str) -> list[str]:
    """Every check on a release's wheel and sdist; an empty list means they may ship."""
    return [
        *run_checkers(wheel, sdist, cwd=dist.folder),
        *check_wheel(wheel, dist, version),
        *check_sdist(sdist, dist, version),
    ]
