"""The server images: a local Debian base, builds with Debian's buildah, dependency locks.

``python -m amora_devtools.images base`` makes the local base image (``debootstrap
--variant=minbase bookworm``, the same content as ``debian:bookworm-slim``) once and keeps it:
no container registry is reachable from the machines this project is built on, so the
Dockerfiles' pinned default base cannot be pulled here. ``build [NAME ...]`` builds the images
against it (``buildah --storage-driver vfs bud --isolation chroot --layers``: cached layers make a
rebuild without changes take seconds). ``lock`` rewrites the images' hash-locked requirement
files from the workspace's installed versions. ``smoke`` runs them against each other
(`amora_devtools.image_smoke`).

Everything here needs root (debootstrap, buildah's vfs storage) and Debian's ``buildah`` and
``debootstrap`` (``tools/dev`` installs them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Final

from amora_devtools._errors import DevtoolsError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "BASE_IMAGE",
    "IMAGES",
    "BuiltImage",
    "ImageSpec",
    "build_images",
    "buildah",
    "ensure_base",
    "image_config",
    "main",
    "repo_root",
    "write_locks",
]

BASE_IMAGE: Final = "localhost/amora-base:bookworm"
_SUITE: Final = "bookworm"
_MIRROR: Final = "http://deb.debian.org/debian"
# Bumped when the base's recipe changes, so a cached base from an older recipe is rebuilt.
_BASE_RECIPE: Final = "1"
_STORAGE: Final = ("--storage-driver", "vfs")


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """One image of the project.

    Attributes:
        name: Image name (``localhost/{name}:{tag}`` here).
        dockerfile: Relative to the repository root, which is the build context.
        version_from: ``pyproject.toml`` whose version labels the image, or a VERSION file.
        lock: The hash-locked requirements (None: no Python dependencies from an index).
        lock_from: Distributions whose dependencies the lock covers (siblings excluded).
        sources: Folders the Dockerfile bind-mounts (their digest keys buildah's layer cache).
    """

    name: str
    dockerfile: str
    version_from: str
    lock: str | None = None
    lock_from: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()


IMAGES: Final = (
    ImageSpec(
        "amora-authz",
        "infra/images/authz/Dockerfile",
        "packages/amora-authz-service/pyproject.toml",
        lock="infra/images/authz/requirements.lock",
        lock_from=("amora-authz-service", "amora-protocol"),
        sources=("packages/amora-protocol", "packages/amora-authz-service"),
    ),
    ImageSpec("amora-broker", "infra/images/broker/Dockerfile", "infra/images/broker/VERSION"),
    ImageSpec(
        "amora-player-sim",
        "infra/images/player-sim/Dockerfile",
        "packages/amora-device-agent/pyproject.toml",
        lock="infra/images/player-sim/requirements.lock",
        lock_from=("amora-device-agent", "amora-protocol"),
        sources=("packages/amora-protocol", "packages/amora-device-agent"),
    ),
)
# What builds the project's own wheels inside the images: the packages' build backend
# (their `build-system.requires`, resolved to the newest allowed release) and its dependencies.
BUILD_LOCK: Final = "infra/images/build-requirements.lock"
_BUILD_SYSTEM_OF: Final = "packages/amora-protocol/pyproject.toml"
_SIBLINGS: Final = re.compile(r"^amora-")


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """An image built by `build_images`."""

    name: str
    reference: str
    version: str
    seconds: float
    size: str  # as buildah reports it ("208 MB")


def repo_root() -> Path:
    """The repository checkout these tools run from (it holds ``infra/images``).

    Raises:
        DevtoolsError: Not run from a checkout.
    """
    root = Path(__file__).resolve().parents[2]
    if not (root / "infra" / "images").is_dir():
        raise DevtoolsError(f"{root} is not an Amora checkout (no infra/images): run from the repository")
    return root


def buildah(*args: str, capture: bool = True, timeout: float = 1800) -> str:
    """Run ``buildah --storage-driver vfs ARGS``; return its stdout.

    Raises:
        DevtoolsError: buildah is missing or failed (its stderr is in the message).
    """
    exe = shutil.which("buildah")
    if exe is None:
        raise DevtoolsError("buildah not found: apt-get install buildah (tools/dev does it)")
    result = subprocess.run(  # noqa: S603 - fixed program, arguments from this module
        [exe, *_STORAGE, *args],
        check=False,
        timeout=timeout,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=True,
    )
    if result.returncode != 0:
        detail = (result.stderr or "").strip()[-2000:] if capture else "see the output above"
        raise DevtoolsError(f"buildah {' '.join(args[:2])} failed ({result.returncode}): {detail}")
    return result.stdout or ""


def image_config(reference: str) -> dict[str, object]:
    """The image's runtime configuration (Docker format: it carries HEALTHCHECK)."""
    data = json.loads(buildah("inspect", "--type", "image", reference))
    config = data.get("Docker", {}).get("config") or data.get("OCIv1", {}).get("config") or {}
    return dict(config)


def _image_exists(reference: str) -> bool:
    try:
        buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", reference)
    except DevtoolsError:
        return False
    return True


def _label(reference: str, key: str) -> str | None:
    labels = image_config(reference).get("Labels")
    return labels.get(key) if isinstance(labels, dict) else None


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "amora-images"


def _slim(rootfs: Path) -> None:
    """Drop what ``debian:bookworm-slim`` drops too: docs, man pages, locales, apt caches.

    The dpkg excludes keep packages installed later (in the Dockerfiles) slim as well.
    """
    (rootfs / "etc/dpkg/dpkg.cfg.d/amora-slim").write_text(
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n"
    )
    (rootfs / "etc/apt/apt.conf.d/amora-slim").write_text(
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\n'
    )
    for pattern in ("usr/share/man/*", "usr/share/info/*", "usr/share/locale/*", "var/cache/apt/archives/*.deb"):
        for path in rootfs.glob(pattern):
            if path.name != "locale.alias":
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for path in (rootfs / "usr/share/doc").glob("*/*"):
        if path.name != "copyright":
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for path in (rootfs / "var/lib/apt/lists").glob("*"):
        if path.is_file():
            path.unlink()


def _debootstrap(tarball: Path) -> None:
    exe = shutil.which("debootstrap")
    if exe is None:
        raise DevtoolsError("debootstrap not found: apt-get install debootstrap (tools/dev does it)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        sys.stderr.write(f"images: debootstrap --variant=minbase {_SUITE} (about a minute)\n")
        result = subprocess.run(  # noqa: S603 - fixed program
            [exe, "--variant=minbase", _SUITE, str(rootfs), _MIRROR], check=False, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise DevtoolsError(f"debootstrap failed ({result.returncode}): {result.stdout[-1500:]}{result.stderr}")
        _slim(rootfs)
        partial = tarball.with_suffix(".partial")
        # Device nodes and the kernel's file systems are the container runtime's business.
        subprocess.run(  # noqa: S603 - fixed program
            [
                shutil.which("tar") or "/usr/bin/tar",
                "-C",
                str(rootfs),
                "--numeric-owner",
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "-cf",
                str(partial),
                ".",
            ],
            check=True,
        )
        partial.replace(tarball)


def ensure_base(*, refresh: bool = False) -> tuple[str, float]:
    """Make the local base image unless it exists already; return it and the seconds spent.

    The rootfs tarball is cached in ``~/.cache/amora-images`` (``XDG_CACHE_HOME``), the image in
    buildah's storage; either one saves the debootstrap run.
    """
    started = time.monotonic()
    if not refresh and _image_exists(BASE_IMAGE) and _label(BASE_IMAGE, "org.amora.base-recipe") == _BASE_RECIPE:
        return BASE_IMAGE, time.monotonic() - started
    tarball = _cache_dir() / f"debian-{_SUITE}-minbase-r{_BASE_RECIPE}.tar"
    if refresh or not tarball.exists():
        _debootstrap(tarball)
    with tempfile.TemporaryDirectory() as context:
        shutil.copy(tarball, Path(context) / "rootfs.tar")
        (Path(context) / "Containerfile").write_text(
            "FROM scratch\nADD rootfs.tar /\n"
            f'LABEL org.amora.base-recipe="{_BASE_RECIPE}" '
            f'org.opencontainers.image.description="debootstrap --variant=minbase {_SUITE} (local base)"\n'
            'CMD ["bash"]\n'
        )
        buildah("bud", "--isolation", "chroot", "--format", "docker", "-t", BASE_IMAGE, context)
    return BASE_IMAGE, time.monotonic() - started


def _version(root: Path, spec: ImageSpec) -> str:
    path = root / spec.version_from
    if path.suffix == ".toml":
        return str(tomllib.loads(path.read_text())["project"]["version"])
    return path.read_text().strip()


def _revision(root: Path) -> str:
    result = subprocess.run(  # noqa: S603 - fixed arguments
        [shutil.which("git") or "git", "-C", str(root), "rev-parse", "HEAD"],
        check=False,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() or "unknown"


def _size(reference: str) -> str:
    for entry in json.loads(buildah("images", "--json", reference)):
        return str(entry.get("size", "?"))
    return "?"


_NOT_BUILT: Final = frozenset({"__pycache__", "tests", ".hatch", "dist", "build", ".pytest_cache", ".mypy_cache"})


def _digest(root: Path, paths: Sequence[str]) -> str:
    """SHA-256 over the files under ``paths`` (names and contents), build output excluded."""
    digest = hashlib.sha256()
    for top in paths:
        start = root / top
        found = [start] if start.is_file() else sorted(start.rglob("*"))
        files = [p for p in found if p.is_file() and not _NOT_BUILT & set(p.relative_to(root).parts)]
        for path in files:
            if path.suffix == ".pyc":
                continue
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _trust_args() -> list[str]:
    """Let pip inside the build trust what this host trusts (TLS-intercepting proxies).

    pip in a venv trusts its own certifi bundle, not the system's; the host's bundle is
    mounted for RUN steps only (it is not part of any layer) and named by PIP_CERT.
    """
    bundle = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    if not Path(bundle).is_file():
        return []
    inside = "/etc/amora-build/ca-certificates.crt"
    return ["--volume", f"{bundle}:{inside}:ro", "--build-arg", f"PIP_CERT={inside}"]


def _cache_keys(root: Path, spec: ImageSpec) -> list[str]:
    if spec.lock is None:
        return []
    return [
        "--build-arg", f"LOCKS_DIGEST={_digest(root, [BUILD_LOCK, spec.lock])}",
        "--build-arg", f"SOURCES_DIGEST={_digest(root, spec.sources)}",
    ]  # fmt: skip


def build_images(names: Sequence[str] = (), *, base: str = BASE_IMAGE, tag: str = "dev") -> list[BuiltImage]:
    """Build the images (all when ``names`` is empty) against ``base``; tags ``{version}`` and ``tag``.

    Raises:
        DevtoolsError: An unknown name, or a build failed.
    """
    root = repo_root()
    known = {spec.name: spec for spec in IMAGES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DevtoolsError(f"unknown image(s) {unknown}: choose from {sorted(known)}")
    built = []
    revision = _revision(root)
    for spec in [known[n] for n in names] if names else IMAGES:
        version = _version(root, spec)
        reference = f"localhost/{spec.name}:{tag}"
        started = time.monotonic()
        sys.stderr.write(f"images: building {spec.name} {version}\n")
        buildah(
            "bud", "--isolation", "chroot", "--layers", "--format", "docker",
            "--build-arg", f"BASE_IMAGE={base}",
            "--build-arg", f"VERSION={version}",
            "--build-arg", f"REVISION={revision}",
            *_trust_args(),
            *_cache_keys(root, spec),
            "-f", str(root / spec.dockerfile),
            "-t", reference, "-t", f"localhost/{spec.name}:{version}",
            str(root),
        )  # fmt: skip
        built.append(BuiltImage(spec.name, reference, version, time.monotonic() - started, _size(reference)))
    return built


def _pins(distribution: str) -> list[str]:
    """The installed versions of ``distribution``'s dependencies (siblings excluded), as pins."""
    pins = []
    for requirement in metadata.requires(distribution) or []:
        if ";" in requirement and "extra ==" in requirement:
            continue
        match = re.match(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?", requirement)
        if match is None or _SIBLINGS.match(match.group(1)):
            continue
        name, extras = match.group(1), match.group(2) or ""
        pins.append(f"{name}{extras}=={metadata.version(name)}")
    return pins


def write_locks() -> list[Path]:
    """Rewrite every lock from the versions installed in this (workspace) environment.

    ``uv pip compile --generate-hashes`` resolves the pinned top-level versions for Linux x86-64
    and Python 3.11 (Debian 12's) and records every file's hash; ``pip install --require-hashes``
    in the Dockerfiles then refuses anything else.

    Raises:
        DevtoolsError: uv is missing or the resolution failed.
    """
    uv = shutil.which("uv")
    if uv is None:
        raise DevtoolsError("uv not found: pip install uv (used only to write the locks)")
    root = repo_root()
    build_requires = tomllib.loads((root / _BUILD_SYSTEM_OF).read_text())["build-system"]["requires"]
    jobs: list[tuple[str, list[str]]] = [(BUILD_LOCK, [str(r) for r in build_requires])]
    for spec in IMAGES:
        if spec.lock is not None:
            pins = sorted({pin for dist in spec.lock_from for pin in _pins(dist)}, key=str.lower)
            jobs.append((spec.lock, pins))
    written = []
    for lock, pins in jobs:
        with tempfile.NamedTemporaryFile("w", suffix=".in") as source:
            source.write("\n".join(pins) + "\n")
            source.flush()
            result = subprocess.run(  # noqa: S603 - fixed program
                [uv, "pip", "compile", source.name, "--generate-hashes", "--no-header", "--quiet",
                 "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28",
                 "--index-url", "https://pypi.org/simple", "--no-annotate"],
                check=False, capture_output=True, text=True,
            )  # fmt: skip
        if result.returncode != 0:
            raise DevtoolsError(f"uv pip compile for {lock} failed: {result.stderr[-2000:]}")
        header = (
            f"# {lock}: written by `python -m amora_devtools.images lock` from the workspace's installed\n"
            "# versions (uv pip compile --generate-hashes, Linux x86-64, Python 3.11). Do not edit.\n"
        )
        (root / lock).write_text(header + result.stdout)
        written.append(root / lock)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``base``, ``build``, ``lock``, ``smoke``."""
    parser = argparse.ArgumentParser(prog="python -m amora_devtools.images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"amora-devtools {metadata.version('amora-devtools')}")
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("base", help="make the local Debian base image (cached)")
    base.add_argument("--refresh", action="store_true", help="run debootstrap again even when cached")
    build = sub.add_parser("build", help="build the images against the local base")
    build.add_argument("names", nargs="*", help=f"images to build (default: all of {[s.name for s in IMAGES]})")
    sub.add_parser("lock", help="rewrite the hash-locked requirements from the workspace")
    smoke = sub.add_parser("smoke", help="build all images and run them against each other")
    smoke.add_argument("--keep", metavar="DIR", help="keep the smoke test's files (logs, PKI) in DIR")
    args = parser.parse_args(argv)
    try:
        if args.command == "base":
            reference, seconds = ensure_base(refresh=args.refresh)
            sys.stdout.write(f"{reference} ready in {seconds:.1f} s\n")
        elif args.command == "build":
            ensure_base()
            for image in build_images(args.names):
                sys.stdout.write(f"{image.reference} ({image.version}): {image.size}, built in {image.seconds:.1f} s\n")
        elif args.command == "lock":
            for path in write_locks():
                sys.stdout.write(f"wrote {path}\n")
        else:
            from amora_devtools.image_smoke import run_smoke  # noqa: PLC0415 - heavier imports, only here

            return run_smoke(keep=Path(args.keep) if args.keep else None)
    except DevtoolsError as exc:
        sys.stderr.write(f"images: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
