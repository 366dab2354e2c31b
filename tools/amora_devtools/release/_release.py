"""Cut a release of one distribution: version, changelog, sibling ranges, artefacts, record.

Order matters. Everything that can fail (the bump, the changelog, the build, the checks, the
lock and SBOM) runs on the working tree first; only when all of it passed are the edits
committed, the commit tagged ``<distribution>-v<version>`` and recorded in ``releases.toml``
(a second commit, since a commit cannot name its own hash). On any failure the edited files
are restored, so a refused release leaves the tree as it found it.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amora_devtools.release import _git
from amora_devtools.release._artefacts import check_artefacts
from amora_devtools.release._build import build, hatch_version
from amora_devtools.release._changelog import add_unreleased_entry, move_unreleased, unreleased_entries
from amora_devtools.release._errors import ReleaseError
from amora_devtools.release._project import (
    Distribution,
    distributions,
    find,
    move_sibling_ranges,
    sibling_dependencies,
)
from amora_devtools.release._record import RECORD_FILE, Release, add_release, latest
from amora_devtools.release._sbom import write_lock_and_sbom

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["BUMPS", "Artefacts", "Cut", "build_and_check", "cut_release"]

BUMPS = ("major", "minor", "patch", "first")


@dataclass(frozen=True)
class Artefacts:
    """What a release ships: wheel, sdist, the closure's lock and its CycloneDX SBOM."""

    wheel: Path
    sdist: Path
    lock: Path
    sbom: Path


@dataclass(frozen=True)
class Cut:
    """A release that was cut."""

    release: Release
    artefacts: Artefacts
    siblings_to_release: tuple[str, ...]


def build_and_check(root: Path, dist: Distribution, version: str) -> Artefacts:
    """Build, check, lock and SBOM ``dist`` at ``version`` as the working tree has it.

    Raises:
        ReleaseError: The build failed or the artefacts broke a rule (every problem listed).
    """
    wheel, sdist = build(dist, version)
    problems = check_artefacts(wheel, sdist, dist, version)
    if problems:
        raise ReleaseError(f"{dist.name} {version}: the artefacts failed their checks", problems=tuple(problems))
    siblings = [d.dist_dir for d in distributions(root) if d.publishable and d.name != dist.name]
    lock, sbom = write_lock_and_sbom(wheel, dist, version, find_links=[p for p in siblings if p.is_dir()])
    return Artefacts(wheel, sdist, lock, sbom)


def _refuse_early(root: Path, dist: Distribution, bump: str) -> None:
    if bump not in BUMPS:
        raise ReleaseError(f"unknown bump {bump!r}: use one of {', '.join(BUMPS)}")
    dirty = _git.dirty_paths(root)
    if dirty:
        shown = "\n".join(dirty[:10])
        raise ReleaseError(f"the working tree is not clean; commit or stash first:\n{shown}")
    if not unreleased_entries(dist.changelog.read_text()):
        raise ReleaseError(
            f"{dist.changelog.relative_to(root)} has nothing under '## Unreleased': nothing to release"
            " (add the changes under Added / Changed / Fixed ... first)"
        )
    previous = latest(root, dist.name)
    if bump == "first" and previous is not None:
        raise ReleaseError(
            f"{dist.name} was already released ({previous.version}); 'first' only releases a never-released"
            " distribution at its current version: use major, minor or patch"
        )
    if bump != "first" and previous is None:
        raise ReleaseError(
            f"{dist.name} was never released; cut its first release at its current version {dist.version}"
            f" with 'first' (tools/dev release {dist.name} first)"
        )
    _refuse_unreleased_dependencies(root, dist)


def _refuse_unreleased_dependencies(root: Path, dist: Distribution) -> None:
    """Refuse while a sibling ``dist`` requires has unreleased changes.

    The siblings are developed against each other's current code: ``dist`` may import what a
    dependency added since its last release, and its range (``>=0.1,<0.2``) would let pip pair
    the new wheel with that older release, which fails on import. Releasing the dependency
    first moves ``dist``'s lower bound onto it (see ``cut_release``'s ``require_latest``).
    """
    pending = [
        (sibling, len(unreleased_entries(sibling.changelog.read_text())))
        for sibling in sibling_dependencies(root, dist)
        if sibling.changelog.is_file() and unreleased_entries(sibling.changelog.read_text())
    ]
    if pending:
        shown = "; ".join(
            f"{s.name} ({n} entr{'y' if n == 1 else 'ies'} under '## Unreleased' in {s.changelog.relative_to(root)})"
            for s, n in pending
        )
        first = pending[0][0].name
        raise ReleaseError(
            f"{dist.name} depends on unreleased changes: {shown}. Its code may use them, and its range would let"
            f" pip install it with the older release. Release {first} first (tools/dev release {first} minor,"
            f" which moves {dist.name}'s lower bound onto it), then {dist.name}"
        )


def cut_release(  # noqa: PLR0913 - the options are keyword-only
    root: Path,
    name: str,
    bump: str,
    *,
    require_latest: bool | None = None,
    today: dt.date | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> Cut:
    """Cut a release of distribution ``name`` in the git repository at ``root``.

    Args:
        root: The repository's top folder (a clean work tree).
        name: The distribution (``amora-protocol``, ...).
        bump: ``major``, ``minor`` or ``patch`` (``hatch version BUMP``), or ``first`` for a
            distribution that was never released: its current version is released as is.
        require_latest: Move every sibling requirement on ``name`` up to the new version
            (lower bound ``>=X.Y`` or, for a patch, ``>=X.Y.Z``), not only those that exclude
            it. Default: yes for ``major``, ``minor`` and ``first`` (the siblings are tested
            against this code and may use what it adds), no for ``patch`` (a fix adds nothing
            to depend on; pass ``True`` when a sibling needs the fix).
        today: The release date (default: today, UTC).
        log: Called with one line per step.

    Returns:
        The recorded release, its artefacts and the siblings whose ranges moved (they need
        a release of their own to be installable with this one).

    Raises:
        ReleaseError: Refused (dirty tree, empty Unreleased, a sibling it requires has unreleased
            changes, tag exists, ...) or failed; the
            tree is restored.
    """
    dist = find(root, name)
    _refuse_early(root, dist, bump)
    date = (today or dt.datetime.now(dt.UTC).date()).isoformat()
    touched = [dist.pyproject, dist.changelog]
    try:
        version, tag = _new_version(root, dist, bump)
        log(f"{name}: version {version} ({bump})")
        notes = "\n".join(unreleased_entries(dist.changelog.read_text()))
        dist.changelog.write_text(move_unreleased(dist.changelog.read_text(), version, date))
        latest_only = bump != "patch" if require_latest is None else require_latest
        changes = move_sibling_ranges(root, dist, version, require_latest=latest_only)
        for change in changes:
            log(f"{change.sibling.name}: requirement {change.old} -> {change.new}")
            text = change.sibling.changelog.read_text() if change.sibling.changelog.is_file() else "# Changelog\n"
            entry = f"Requires `{change.new}` (was `{change.old}`)."
            change.sibling.changelog.write_text(add_unreleased_entry(text, "Changed", entry))
            touched += [change.sibling.pyproject, change.sibling.changelog]
        artefacts = build_and_check(root, dist, version)
        log(f"{name}: built and checked {artefacts.wheel.name}, {artefacts.sdist.name}, {artefacts.sbom.name}")
    except BaseException:
        _restore(root, touched)
        raise
    paths = [str(p.relative_to(root)) for p in dict.fromkeys(touched)]
    try:
        commit = _git.commit(root, paths, f"Release {name} {version}\n\n{notes}\n")
    except ReleaseError:  # e.g. no committer identity: nothing was recorded, so undo the edits
        _git.git(root, "reset", "--quiet", "--", *paths)
        _restore(root, touched)
        raise
    _git.tag(root, tag, commit, f"{name} {version}")
    release = Release(name, version, commit, date, tag)
    add_release(root, release)
    _git.commit(root, [RECORD_FILE], f"Record the {name} {version} release ({commit[:12]}) in {RECORD_FILE}")
    log(f"{name}: committed {commit[:12]}, tagged {tag}, recorded in {RECORD_FILE}")
    return Cut(release, artefacts, tuple(c.sibling.name for c in changes if c.sibling.publishable))


def _new_version(root: Path, dist: Distribution, bump: str) -> tuple[str, str]:
    """Bump (or, for ``first``, read) the version; return it and its tag, refusing a tag that exists."""
    version = hatch_version(dist.folder, None if bump == "first" else bump)
    tag = dist.tag(version)
    if _git.tag_exists(root, tag):
        raise ReleaseError(f"tag {tag} already exists: {dist.name} {version} was released before")
    return version, tag


def _restore(root: Path, paths: list[Path]) -> None:
    """Put the edited files back as HEAD has them (a refused release changes nothing)."""
    rel = [str(p.relative_to(root)) for p in dict.fromkeys(paths) if p.exists()]
    if rel:
        subprocess.run(["git", "-C", str(root), "checkout", "HEAD", "--", *rel], check=False, capture_output=True)  # noqa: S603, S607 - fixed argv
