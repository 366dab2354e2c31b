"""The monorepo's distributions: where each lives, its version, and who depends on whom."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from amora_devtools.release._errors import ReleaseError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "Distribution",
    "RangeChange",
    "compatible_range",
    "distributions",
    "find",
    "move_sibling_ranges",
    "required_range",
    "sibling_dependencies",
]


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


def required_range(version: str) -> str:
    """The range that requires ``version`` itself: its full version as the lower bound.

    ``>=0.2.1,<0.3`` for ``0.2.1``; the upper bound is :func:`compatible_range`'s. For
    ``X.Y.0`` it is the compatible range itself, written the same way (``>=0.2,<0.3``).
    """
    v = Version(version)
    if v.micro == 0 and not v.pre and not v.post and not v.dev:
        return compatible_range(version)
    upper = compatible_range(version).split(",", 1)[1]
    return f">={v},{upper}"


def sibling_dependencies(root: Path, dist: Distribution) -> list[Distribution]:
    """The publishable siblings ``dist`` requires, directly or through another sibling, nearest first."""
    by_name = {canonicalize_name(d.name): d for d in distributions(root) if d.publishable}
    found: list[Distribution] = []
    queue = [dist]
    while queue:
        current = queue.pop(0)
        for dependency in current.dependencies:
            sibling = by_name.get(canonicalize_name(Requirement(dependency).name))
            if sibling is not None and sibling.name != dist.name and sibling not in found:
                found.append(sibling)
                queue.append(sibling)
    return found


@dataclass(frozen=True)
class RangeChange:
    """A sibling's requirement on a released distribution that had to move."""

    sibling: Distribution
    old: str
    new: str


def move_sibling_ranges(
    root: Path, released: Distribution, version: str, *, require_latest: bool = False
) -> list[RangeChange]:
    """Rewrite every sibling requirement on ``released`` that excludes ``version``.

    Without ``require_latest`` a requirement that still admits the new version (a patch, or a
    compatible minor from 1.0 on) is left alone. With it, every requirement is moved to
    :func:`required_range` (``version`` as its lower bound): the siblings are developed and
    tested against the released code, and may use what it added, so an older release must
    not satisfy them.

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
            wanted = required_range(version) if require_latest else compatible_range(version)
            admits = req.specifier.contains(target, prereleases=True)
            if admits and (not require_latest or req.specifier == SpecifierSet(wanted)):
                continue
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            marker = f"; {req.marker}" if req.marker else ""
            new = f"{req.name}{extras}{wanted}{marker}"
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
