"""The monorepo's distributions: where each lives, its version, and who depends on whom."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from amora_devtools.release._errors import ReleaseError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Distribution", "RangeChange", "compatible_range", "distributions", "find", "move_sibling_ranges"]


@dataclass(frozen=True)
class Distribution:
    """One Python distribution of the monorepo (a folder with a ``pyproject.toml`` ``[project]``)."""

    name: str
    folder: Path
    version: str
    dependencies: tuple[str, ...]
    publishable: bool

    @property
    def pyproject(self) -> Path:
        """Its ``pyproject.toml``."""
        return self.folder / "pyproject.toml"

    @property
    def changelog(self) -> Path:
        """Its ``CHANGELOG.md``."""
        return self.folder / "CHANGELOG.md"

    @property
    def dist_dir(self) -> Path:
        """Where ``hatch build`` writes its wheel and sdist."""
        return self.folder / "dist"

    @property
    def file_stem(self) -> str:
        """The name as it appears in wheel and sdist file names (``amora_protocol``)."""
        return canonicalize_name(self.name).replace("-", "_")

    def tag(self, version: str) -> str:
        """The release tag of ``version``: ``<distribution>-v<version>``."""
        return f"{self.name}-v{version}"


def _load(folder: Path, *, publishable: bool) -> Distribution | None:
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file():
        return None
    project = tomllib.loads(pyproject.read_text()).get("project")
    if not isinstance(project, dict) or "version" not in project:
        return None
    return Distribution(
        name=str(project["name"]),
        folder=folder,
        version=str(project["version"]),
        dependencies=tuple(str(d) for d in project.get("dependencies", [])),
        publishable=publishable,
    )


def distributions(root: Path) -> list[Distribution]:
    """Every distribution: the published ones under ``packages/`` and the unpublished ``tools``."""
    found: list[Distribution] = []
    packages = root / "packages"
    if packages.is_dir():
        for folder in sorted(packages.iterdir()):
            dist = _load(folder, publishable=True)
            if dist is not None:
                found.append(dist)
    tools = _load(root / "tools", publishable=False)
    if tools is not None:
        found.append(tools)
    return found


def find(root: Path, name: str) -> Distribution:
    """The publishable distribution called ``name``.

    Raises:
        ReleaseError: No such distribution (the message lists the known ones).
    """
    known = [d for d in distributions(root) if d.publishable]
    for dist in known:
        if canonicalize_name(dist.name) == canonicalize_name(name):
            return dist
    names = ", ".join(d.name for d in known) or "(none)"
    raise ReleaseError(f"no distribution {name!r} under {root / 'packages'}; known: {names}")


def compatible_range(version: str) -> str:
    """The range siblings use for ``version``: same minor while 0.x, same major from 1.0."""
    v = Version(version)
    if v.major == 0:
        return f">={v.major}.{v.minor},<{v.major}.{v.minor + 1}"
    return f">={v.major}.{v.minor},<{v.major + 1}"


@dataclass(frozen=True)
class RangeChange:
    """A sibling's requirement on a released distribution that had to move."""

    sibling: Distribution
    old: str
    new: str


def move_sibling_ranges(root: Path, released: Distribution, version: str) -> list[RangeChange]:
    """Rewrite every sibling requirement on ``released`` that excludes ``version``.

    A requirement that still admits the new version (a patch, or a compatible minor from
    1.0 on) is left alone: moving it would force a sibling release for nothing.

    Raises:
        ReleaseError: A requirement string could not be found verbatim to rewrite.
    """
    changes: list[RangeChange] = []
    target = Version(version)
    for sibling in distributions(root):
        if sibling.name == released.name:
            continue
        text = sibling.pyproject.read_text()
        for dependency in sibling.dependencies:
            req = Requirement(dependency)
            if canonicalize_name(req.name) != canonicalize_name(released.name):
                continue
            if req.specifier.contains(target, prereleases=True):
                continue
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            marker = f"; {req.marker}" if req.marker else ""
            new = f"{req.name}{extras}{compatible_range(version)}{marker}"
            quoted = re.escape(f'"{dependency}"')
            text, count = re.subn(quoted, f'"{new}"', text)
            if count != 1:
                raise ReleaseError(
                    f"{sibling.pyproject}: found {count} copies of the requirement {dependency!r};"
                    " edit it by hand to a single double-quoted string"
                )
            changes.append(RangeChange(sibling, dependency, new))
        if any(c.sibling is sibling for c in changes):
            sibling.pyproject.write_text(text)
    return changes
