"""The server images' build inputs, checked without building (the build is `hatch run images:smoke`)."""

from __future__ import annotations

import json
import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from amora_devtools.images import IMAGES, ImageSpec, repo_root

LOCKED = [spec for spec in IMAGES if spec.lock is not None]


def _pins(spec: ImageSpec) -> dict[str, str]:
    assert spec.lock is not None
    text = (repo_root() / spec.lock).read_text()
    return {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.MULTILINE)
    }


@pytest.mark.parametrize("spec", LOCKED, ids=[s.name for s in LOCKED])
def test_each_lock_satisfies_its_packages_requirements(spec):
    # A dependency added to a package without `hatch run images:lock` fails here, not ten
    # minutes into a build (where `pip check` would catch it).
    pins = _pins(spec)
    for distribution in spec.lock_from:
        for raw in metadata.requires(distribution) or []:
            requirement = Requirement(raw)
            if requirement.name.startswith("amora-") or (requirement.marker and "extra" in str(requirement.marker)):
                continue
            name = requirement.name.lower().replace("_", "-")
            assert name in pins, f"{spec.lock} lacks {raw} ({distribution}): run `hatch run images:lock`"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"{spec.lock} pins {name}=={pins[name]}, {distribution} wants {raw}: run `hatch run images:lock`"
            )


@pytest.mark.parametrize("spec", LOCKED, ids=[s.name for s in LOCKED])
def test_every_locked_requirement_carries_hashes(spec):
    assert spec.lock is not None
    entries = re.split(r"\n(?=[A-Za-z0-9])", (repo_root() / spec.lock).read_text().split("\n", 2)[2])
    assert entries
    for entry in entries:
        if entry.strip():
            assert "--hash=sha256:" in entry, entry


@pytest.mark.parametrize("spec", IMAGES, ids=[s.name for s in IMAGES])
def test_dockerfile_runs_unprivileged_with_exec_forms_labels_and_a_volume(spec):
    text = (repo_root() / spec.dockerfile).read_text()
    instructions = re.sub(r"\\\n\s*", " ", text)
    lines = [line.strip() for line in instructions.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    def last(keyword: str) -> str:
        found = [line for line in lines if line.split()[0] == keyword]
        assert found, f"{spec.dockerfile} has no {keyword}"
        return found[-1][len(keyword) :].strip()

    assert last("USER").split(":")[0] == "10001"
    assert isinstance(json.loads(last("ENTRYPOINT")), list)
    assert isinstance(json.loads(last("CMD")), list)
    assert re.search(r"CMD \[", last("HEALTHCHECK"))
    assert json.loads(last("VOLUME"))
    for label in ("version", "revision", "source", "title"):
        assert f"org.opencontainers.image.{label}=" in last("LABEL")
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"docker\.io/library/debian:bookworm-slim@sha256:[0-9a-f]{64}", base.group(1))
