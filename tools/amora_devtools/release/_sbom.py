"""Each wheel's dependency closure: a lock (``pip lock``, PEP 751) and a CycloneDX SBOM made from it.

The lock is resolved for the interpreter and platform that run the release (CPython on Linux
x86-64 in CI); it pins every distribution the wheel pulls in, with its file hash. The SBOM
lists the wheel as the subject and every locked distribution as a component (name, version,
``pkg:pypi`` purl, SHA-256 of the locked file). ``pip lock`` records no dependency graph,
so the SBOM states the wheel's direct requirements and leaves the edges between the other
components unstated rather than guessing them.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import subprocess
import sys
import tomllib
import zipfile
from typing import TYPE_CHECKING, Any

from cyclonedx.model import HashAlgorithm, HashType
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import LicenseExpression
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from amora_devtools.release._errors import ReleaseError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from amora_devtools.release._project import Distribution

__all__ = ["lock_closure", "sbom_from_lock", "validate_sbom", "write_lock_and_sbom"]


def lock_closure(wheel: Path, out: Path, *, find_links: Sequence[Path] = ()) -> dict[str, Any]:
    """``pip lock`` the wheel's closure into ``out`` (pylock.toml); return the parsed lock.

    ``find_links`` are folders with sibling wheels (``packages/*/dist``), so a sibling that
    is released together with this one resolves before it reaches the index.

    Raises:
        ReleaseError: pip could not resolve the closure (its output is in the message).
    """
    argv = [sys.executable, "-m", "pip", "lock", "--quiet", "--output", str(out)]
    for folder in find_links:
        argv += ["--find-links", str(folder)]
    done = subprocess.run([*argv, str(wheel)], capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
    if done.returncode != 0 or not out.is_file():
        raise ReleaseError(
            f"pip lock could not resolve the closure of {wheel.name} (pip >= 25.1 needed):\n{done.stderr.strip()}"
        )
    return tomllib.loads(out.read_text())


def _sha256(entry: dict[str, Any]) -> str | None:
    for key in ("wheels", "sdist", "archive"):
        files = entry.get(key)
        for item in files if isinstance(files, list) else [files] if isinstance(files, dict) else []:
            digest = item.get("hashes", {}).get("sha256")
            if digest:
                return str(digest)
    return None


def sbom_from_lock(lock: dict[str, Any], wheel: Path, dist: Distribution, version: str) -> Bom:
    """A CycloneDX BOM whose subject is ``wheel`` and whose components are the lock's packages."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = f"{dist.file_stem}-{version}.dist-info/METADATA"
        meta = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(zf.read(meta_name))
    root = Component(
        name=dist.name,
        version=version,
        type=ComponentType.LIBRARY,
        bom_ref=f"{dist.name}@{version}",
        purl=PackageURL(type="pypi", name=dist.name, version=version),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=hashlib.sha256(wheel.read_bytes()).hexdigest())],
        licenses=[LicenseExpression(meta["License-Expression"])] if meta["License-Expression"] else None,
        description=meta["Summary"],
    )
    bom = Bom()
    bom.metadata.component = root
    by_name: dict[str, Component] = {}
    for entry in lock.get("packages", []):
        name = canonicalize_name(str(entry["name"]))
        if name == canonicalize_name(dist.name):
            continue
        pkg_version = str(entry.get("version", ""))
        digest = _sha256(entry)
        component = Component(
            name=name,
            version=pkg_version,
            type=ComponentType.LIBRARY,
            bom_ref=f"{name}@{pkg_version}",
            purl=PackageURL(type="pypi", name=name, version=pkg_version),
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=digest)] if digest else None,
        )
        bom.components.add(component)
        by_name[name] = component
    direct = {canonicalize_name(Requirement(r).name) for r in meta.get_all("Requires-Dist") or []}
    bom.register_dependency(root, [by_name[n] for n in sorted(direct) if n in by_name])
    return bom


def validate_sbom(text: str) -> None:
    """Validate a CycloneDX 1.6 JSON document against the schema.

    Raises:
        ReleaseError: It does not conform (the validator's finding is in the message).
    """
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise ReleaseError(f"the SBOM is not valid CycloneDX 1.6: {error}")


def write_lock_and_sbom(
    wheel: Path, dist: Distribution, version: str, *, find_links: Sequence[Path] = ()
) -> tuple[Path, Path]:
    """Write ``<wheel stem>.pylock.toml`` and ``<wheel stem>.cdx.json`` next to the wheel; return both."""
    stem = wheel.name.removesuffix(".whl")
    lock_path = wheel.with_name(f"{stem}.pylock.toml")
    sbom_path = wheel.with_name(f"{stem}.cdx.json")
    lock = lock_closure(wheel, lock_path, find_links=find_links)
    text = JsonV1Dot6(sbom_from_lock(lock, wheel, dist, version)).output_as_string(indent=2)
    validate_sbom(text)
    sbom_path.write_text(text + "\n")
    return lock_path, sbom_path
