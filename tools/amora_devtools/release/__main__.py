"""``python -m amora_devtools.release`` (``tools/dev release``): cut or check a release.

Cut one: ``tools/dev release DISTRIBUTION {major,minor,patch,first}``. Build, check, lock and
SBOM the checked-out version without changing anything (the release workflow):
``tools/dev release --build-only DISTRIBUTION``.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING

from amora_devtools.release._errors import ReleaseError
from amora_devtools.release._project import find
from amora_devtools.release._release import BUMPS, build_and_check, cut_release

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def _say(line: object) -> None:
    sys.stdout.write(f"{line}\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/dev release",
        epilog="Refused while a sibling the distribution requires has entries under '## Unreleased':"
        " release that sibling first.",
        description="Cut a release of one distribution: bump its version with hatch, move its changelog's"
        " Unreleased section under the new version, move sibling ranges onto it, build wheel and sdist"
        " in its dist/, check them, lock the wheel's closure and write its CycloneDX SBOM, then commit, tag"
        " <distribution>-v<version> and record the commit in releases.toml.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version('amora-devtools')}")
    parser.add_argument("distribution", help="e.g. amora-protocol, amora-sync-sdk")
    parser.add_argument(
        "bump",
        nargs="?",
        choices=BUMPS,
        help="major | minor | patch (hatch version BUMP); first = release a never-released distribution as is",
    )
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="build, check, lock and SBOM the checked-out version; change and commit nothing (the release workflow)",
    )
    parser.add_argument(
        "--require-latest",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="move every sibling's requirement on this distribution up to the new version (lower bound >=X.Y, or"
        " >=X.Y.Z for a patch); default: on for major, minor and first, off for patch",
    )
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the repository (default: current folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, 1 when refused or failed, 2 on bad usage."""
    parser = _parser()
    args = parser.parse_args(argv)
    root = args.repo.resolve()
    try:
        if args.build_only:
            dist = find(root, args.distribution)
            done = build_and_check(root, dist, dist.version)
            for path in (done.wheel, done.sdist, done.lock, done.sbom):
                _say(path.relative_to(root))
            return 0
        if args.bump is None:
            parser.error("say which bump: major, minor, patch or first")
        cut = cut_release(root, args.distribution, args.bump, require_latest=args.require_latest, log=_say)
    except ReleaseError as exc:
        sys.stderr.write(f"tools/dev release: {exc}\n")
        return 1
    release = cut.release
    _say(f"released {release.distribution} {release.version}: tag {release.tag}, commit {release.commit}")
    for path in (cut.artefacts.wheel, cut.artefacts.sdist, cut.artefacts.lock, cut.artefacts.sbom):
        _say(f"  {path.relative_to(root)} ({path.stat().st_size:,} bytes)")
    if cut.siblings_to_release:
        _say(f"ranges moved in {', '.join(cut.siblings_to_release)}: release them too")
    _say(f"publish: git push origin HEAD {release.tag}  (the release workflow builds and publishes the tag)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
