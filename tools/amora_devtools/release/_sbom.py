"""Each wheel's dependency closure: a lock (``pip lock``, PEP 751) and a CycloneDX SBOM made from it.

The lock is resolved for the interpreter and platform that run the release (CPython on Linux
x86-64 in CI); it pins every distribution the wheel pulls in, with its file hash. The SBOM
lists the wheel as the subject and every locked distribution as a component (name, version,
``pkg:pypi`` purl, SHA-256 of the locked file). ``pip lock`` records no dependency graph, so
the edges come from each locked distribution's own metadata (``Requires-Dist``, read by a
``pip install --dry-run --no-deps --report`` of exactly the locked pins), with environment
markers evaluated for that platform and extras followed from the wheel down.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
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
    from collections.abc import Mapping, Sequence

    from amora_devtools.release._project import Distribution

__all__ = [
    "dependency_graph",
    "lock_closure",
    "locked_requirements",
    "sbom_from_lock",
    "validate_sbom",
    "write_lock_and_sbom",
]


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


def locked_requirements(
    lock: dict[str, Any], *, find_links: Sequence[Path] = (), exclude: str = ""
) -> dict[str, list[str]]:
    """``Requires-Dist`` of every pinned package in ``lock`` (canonical name -> requirement strings).

    Raises:
        ReleaseError: pip could not read the metadata of the locked pins.
    """
    pins = [
        f"{entry['name']}=={entry['version']}"
        for entry in lock.get("packages", [])
        if entry.get("version") and canonicalize_name(str(entry["name"])) != canonicalize_name(exclude)
    ]
    if not pins:
        return {}
    with tempfile.TemporaryDirectory(prefix="amora-sbom-") as tmp:
        report = Path(tmp) / "report.json"
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet"]
        argv += ["--report", str(report)]
        for folder in find_links:
            argv += ["--find-links", str(folder)]
        done = subprocess.run([*argv, *pins], capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv
        if done.returncode != 0 or not report.is_file():
            raise ReleaseError(f"pip could not read the metadata of the locked packages:\n{done.stderr.strip()}")
        installs = json.loads(report.read_text()).get("install", [])
    return {
        canonicalize_name(item["metadata"]["name"]): list(item["metadata"].get("requires_dist") or [])
        for item in installs
    }


def dependency_graph(root_requires: Sequence[str], requires: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    """Edges between locked distributions: name -> names it needs here ("" is the wheel itself).

    Markers are evaluated for this interpreter and platform, each with the extras its
    dependents asked for; a requirement outside the lock (another platform's) has no edge.
    """
    edges: dict[str, set[str]] = {}
    extras: dict[str, set[str]] = {"": set()}
    queue: list[tuple[str, Sequence[str]]] = [("", root_requires)]
    while queue:
        node, reqs = queue.pop()
        wanted = extras.get(node, set()) | {""}
        for text in reqs:
            req = Requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted):
                continue
            child = canonicalize_name(req.name)
            if child not in requires:
                continue
            edges.setdefault(node, set()).add(child)
            known = extras.get(child)
            if known is None or not set(req.extras) <= known:
                extras[child] = (known or set()) | set(req.extras)
                queue.append((child, requires[child]))
    return edges


def _sha256(entry: dict[str, Any]) -> str | None:
    for key in ("wheels", "sdist", "archive"):
        files = entry.get(key)
        for item in files if isinstance(files, list) else [files] if isinstance(files, dict) else []:
            digest = item.get("hashes", {}).get("sha256")
            if digest:
                return str(digest)
    return None


def sbom_from_lock(
    lock: dict[str, Any],
    wheel: Path,
    dist: Distribution,
    version: str,
    *,
    requires: Mapping[str, Sequence[str]] | None = None,
) -> Bom:
    """A CycloneDX BOM whose subject is ``wheel`` and whose components are the lock's packages.

    ``requires`` (name -> ``Requires-Dist``, see `locked_requirements`) gives the edges between
    components; without it only the wheel's own direct requirements are stated.
    """
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
    root_requires = list(meta.get_all("Requires-Dist") or [])
    if requires is None:
        direct = {canonicalize_name(Requirement(r).name) for r in root_requires}
        bom.register_dependency(root, [by_name[n] for n in sorted(direct) if n in by_name])
        return bom
    edges = dependency_graph(root_requires, {n: requires.get(n, ()) for n in by_name})
    bom.register_dependency(root, [by_name[n] for n in sorted(edges.get("", ()))])
    for dependent, component in sorted(by_name.items()):
        bom.register_dependency(component, [by_name[n] for n in sorted(edges.get(dependent, ()))])
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
    requires = locked_requirements(lock, find_links=find_links, exclude=dist.name)
    text = JsonV1Dot6(sbom_from_lock(lock, wheel, dist, version, requires=requires)).output_as_string(indent=2)
    validate_sbom(text)
    sbom_path.write_text(text + "\n")
    return lock_path, sbom_path
