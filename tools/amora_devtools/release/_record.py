"""``releases.toml``: which commit each released version was built from.

Tags do not travel with every clone (shallow CI checkouts, mirrors, forks), the commit
graph does; so the record is a committed file next to the tags, and the compatibility
suite reads it to rebuild a previous release from source.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packaging.version import Version

from amora_devtools.release._errors import ReleaseError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["RECORD_FILE", "Release", "add_release", "latest", "read_releases"]

RECORD_FILE = "releases.toml"

_HEADER = """\
# Every release cut by `tools/dev release`: distribution -> version -> the commit it was built
# from (the commit that bumped the version and moved the changelog) and its tag. Written by the
# tool, one entry per release; tags may not travel with every clone, this file does. The
# compatibility suite (tests-integration/test_compat.py) rebuilds the latest release of each
# distribution from its commit.
"""


@dataclass(frozen=True)
class Release:
    """One released version of one distribution."""

    distribution: str
    version: str
    commit: str
    date: str
    tag: str


def read_releases(root: Path) -> list[Release]:
    """Every recorded release, in file order (each distribution's oldest first).

    Raises:
        ReleaseError: The file is not valid TOML or an entry lacks ``commit``.
    """
    path = root / RECORD_FILE
    if not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ReleaseError(f"{path} is not valid TOML ({exc}); restore it from git") from exc
    found: list[Release] = []
    for dist, versions in data.items():
        if not isinstance(versions, dict):
            raise ReleaseError(f"{path}: [{dist}] must be a table of versions")
        for version, entry in versions.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("commit"), str):
                raise ReleaseError(f'{path}: {dist} {version} needs a commit = "<hash>"')
            found.append(Release(dist, version, entry["commit"], str(entry.get("date", "")), str(entry.get("tag", ""))))
    return found


def latest(root: Path, distribution: str) -> Release | None:
    """The highest recorded version of ``distribution``, or None if it was never released."""
    mine = [r for r in read_releases(root) if r.distribution == distribution]
    return max(mine, key=lambda r: Version(r.version)) if mine else None


def add_release(root: Path, release: Release) -> None:
    """Append ``release`` and rewrite the file (distributions sorted, versions in release order).

    Raises:
        ReleaseError: That version of that distribution is already recorded.
    """
    releases = read_releases(root)
    if any(r.distribution == release.distribution and r.version == release.version for r in releases):
        raise ReleaseError(f"{release.distribution} {release.version} is already in {RECORD_FILE}")
    releases.append(release)
    lines = [_HEADER]
    for dist in sorted({r.distribution for r in releases}):
        lines.append(f"\n[{dist}]\n")
        lines.extend(
            f'"{r.version}" = {{ commit = "{r.commit}", date = "{r.date}", tag = "{r.tag}" }}\n'
            for r in releases
            if r.distribution == dist
        )
    (root / RECORD_FILE).write_text("".join(lines))
