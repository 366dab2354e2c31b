"""tools/dev release on a throwaway clone of this repository: real hatch, real builds, real git."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from amora_devtools.release import (
    ReleaseError,
    check_artefacts,
    check_wheel,
    compatible_range,
    cut_release,
    find,
    latest,
    read_releases,
    unreleased_entries,
    validate_sbom,
)
from amora_devtools.release._build import build
from amora_devtools.release._project import move_sibling_ranges, required_range

ROOT = Path(__file__).resolve().parent.parent.parent
DAY = dt.date(2026, 12, 1)
SIBLINGS = ("amora-authz-service", "amora-device-agent", "amora-sync-sdk")


def _git(repo: Path, *args: str) -> str:
    argv = ["git", "-C", str(repo), *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()  # noqa: S603 - git, test-made arguments


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A clone of this repository's HEAD, with a committer identity of its own."""
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)  # noqa: S603, S607 - git, fixed argv
    _git(clone, "config", "user.name", "Release Test")
    _git(clone, "config", "user.email", "release-test@example.invalid")
    return clone


def _add_change(repo: Path, dist: str, entry: str) -> None:
    """Give ``dist`` an Unreleased entry and commit it."""
    changelog = repo / "packages" / dist / "CHANGELOG.md"
    text = changelog.read_text()
    head, _, rest = text.partition("## Unreleased\n")
    changelog.write_text(f"{head}## Unreleased\n\n### Changed\n- {entry}\n{rest}")
    _git(repo, "commit", "--quiet", "-am", f"{dist}: {entry}")


def _clear_unreleased(repo: Path, dist: str) -> None:
    """Empty ``dist``'s Unreleased section and commit (as if it had just been released)."""
    changelog = repo / "packages" / dist / "CHANGELOG.md"
    head, _, rest = changelog.read_text().partition("## Unreleased\n")
    after = rest[rest.find("\n## ") :] if "\n## " in rest else "\n"
    changelog.write_text(f"{head}## Unreleased\n{after}")
    _git(repo, "commit", "--quiet", "--allow-empty", "-am", f"{dist}: nothing unreleased")


def _requires(wheel: Path, dist: str) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        info = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(info).decode().splitlines()
    return [line.removeprefix("Requires-Dist: ") for line in lines if line.startswith(f"Requires-Dist: {dist}")]


def _version(repo: Path, dist: str) -> str:
    return str(tomllib.loads((repo / "packages" / dist / "pyproject.toml").read_text())["project"]["version"])


def test_minor_release_bumps_moves_changelog_and_ranges_builds_checks_and_records(repo: Path):
    _add_change(repo, "amora-protocol", "A change worth a minor release.")
    before = _version(repo, "amora-protocol")
    assert compatible_range(before) != compatible_range("0.2.0")  # the ranges must move
    lines: list[str] = []

    cut = cut_release(repo, "amora-protocol", "minor", today=DAY, log=lines.append)

    assert cut.release.version == _version(repo, "amora-protocol") != before
    new = cut.release.version
    # Changelog: Unreleased left empty, the entry under the dated version, older sections kept.
    changelog = (repo / "packages/amora-protocol/CHANGELOG.md").read_text()
    assert unreleased_entries(changelog) == []
    released = changelog.split(f"## {new} - 2026-12-01\n", 1)[1]
    assert released.lstrip().startswith("### Changed\n- A change worth a minor release.")
    assert f"## {before} - " in released
    # Sibling ranges that excluded the new version moved, with a changelog line each.
    for sibling in SIBLINGS:
        pyproject = (repo / "packages" / sibling / "pyproject.toml").read_text()
        assert f'"amora-protocol{compatible_range(new)}"' in pyproject
        assert (
            f"Requires `amora-protocol{compatible_range(new)}`"
            in (repo / "packages" / sibling / "CHANGELOG.md").read_text()
        )
    assert f'"amora-protocol{compatible_range(new)}"' in (repo / "tools/pyproject.toml").read_text()
    assert sorted(cut.siblings_to_release) == list(SIBLINGS)  # tools are not published
    # Artefacts in the package's dist/, with the new version inside.
    dist_dir = repo / "packages/amora-protocol/dist"
    assert cut.artefacts.wheel == dist_dir / f"amora_protocol-{new}-py3-none-any.whl"
    assert cut.artefacts.sdist.is_file()
    with zipfile.ZipFile(cut.artefacts.wheel) as zf:
        assert f"Version: {new}" in zf.read(f"amora_protocol-{new}.dist-info/METADATA").decode()
    # SBOM: valid CycloneDX 1.6, the wheel as subject, the locked closure as components.
    sbom_text = cut.artefacts.sbom.read_text()
    validate_sbom(sbom_text)
    sbom = json.loads(sbom_text)
    assert sbom["metadata"]["component"]["purl"] == f"pkg:pypi/amora-protocol@{new}"
    components = {c["name"]: c for c in sbom["components"]}
    assert {"msgspec", "cryptography", "cffi"} <= components.keys()
    assert all(c["hashes"][0]["alg"] == "SHA-256" for c in components.values())
    graph = {d["ref"].split("@")[0]: {r.split("@")[0] for r in d.get("dependsOn", [])} for d in sbom["dependencies"]}
    assert graph["amora-protocol"] == {"msgspec", "cryptography"}  # the wheel's own requirements
    assert graph["cryptography"] == {"cffi"}  # and the edges further down, from each one's metadata
    assert graph["cffi"] == {"pycparser"}
    assert "[[packages]]" in cut.artefacts.lock.read_text()
    # Record: tag on the release commit, releases.toml maps the version to it, tree clean.
    commit = cut.release.commit
    assert _git(repo, "rev-list", "-n", "1", f"amora-protocol-v{new}") == commit
    assert f'version = "{new}"' in _git(repo, "show", f"{commit}:packages/amora-protocol/pyproject.toml")
    recorded = latest(repo, "amora-protocol")
    assert recorded is not None
    assert (recorded.version, recorded.commit, recorded.date) == (new, commit, "2026-12-01")
    assert (
        _git(repo, "log", "-1", "--format=%s")
        == f"Record the amora-protocol {new} release ({commit[:12]}) in releases.toml"
    )
    assert _git(repo, "status", "--porcelain") == ""
    assert any("built and checked" in line for line in lines)


def test_patch_leaves_sibling_ranges_alone(repo: Path):
    dist = find(repo, "amora-protocol")
    patch = dist.version.rsplit(".", 1)[0] + ".99"
    assert move_sibling_ranges(repo, dist, patch) == []
    assert _git(repo, "status", "--porcelain") == ""


def test_require_latest_moves_lower_bounds_that_still_admit_the_new_version(repo: Path):
    dist = find(repo, "amora-protocol")
    patch = dist.version.rsplit(".", 1)[0] + ".7"
    changes = move_sibling_ranges(repo, dist, patch, require_latest=True)
    assert sorted(c.sibling.name for c in changes) == sorted([*SIBLINGS, "amora-devtools"])
    for sibling in SIBLINGS:
        pyproject = (repo / "packages" / sibling / "pyproject.toml").read_text()
        assert f'"amora-protocol{required_range(patch)}"' in pyproject
    assert required_range(patch).startswith(f">={patch},<")
    # A second pass finds them at the new version already: nothing to move.
    assert move_sibling_ranges(repo, dist, patch, require_latest=True) == []


def test_required_ranges():
    assert required_range("0.2.0") == ">=0.2,<0.3"
    assert required_range("0.2.1") == ">=0.2.1,<0.3"
    assert required_range("1.5.0") == ">=1.5,<2"
    assert required_range("1.5.2") == ">=1.5.2,<2"


def test_refuses_while_a_required_sibling_is_unreleased_then_releases_after_it(repo: Path):
    """Finding: the agent imported protocol names that its range's oldest release lacks."""
    _add_change(repo, "amora-protocol", "New names the agent imports.")
    _add_change(repo, "amora-device-agent", "Uses the new names.")
    head = _git(repo, "rev-parse", "HEAD")
    with pytest.raises(ReleaseError, match="Release amora-protocol first") as info:
        cut_release(repo, "amora-device-agent", "minor", today=DAY)
    assert "amora-device-agent depends on unreleased changes: amora-protocol (" in str(info.value)
    assert "packages/amora-protocol/CHANGELOG.md" in str(info.value)
    assert _git(repo, "rev-parse", "HEAD") == head
    assert _git(repo, "status", "--porcelain") == ""

    protocol = cut_release(repo, "amora-protocol", "minor", today=DAY).release.version
    agent = cut_release(repo, "amora-device-agent", "patch", today=DAY)
    # The agent's wheel cannot be installed with a protocol older than the one it was released after.
    (requirement,) = _requires(agent.artefacts.wheel, "amora-protocol")
    assert Requirement(requirement).specifier == SpecifierSet(required_range(protocol))
    lock = agent.artefacts.lock.read_text()
    assert f'name = "amora-protocol"\nversion = "{protocol}"' in lock


def test_compatible_ranges():
    assert compatible_range("0.3.1") == ">=0.3,<0.4"
    assert compatible_range("1.4.0") == ">=1.4,<2"


def test_refuses_a_dirty_tree(repo: Path):
    _add_change(repo, "amora-sync-sdk", "Something.")
    (repo / "packages/amora-sync-sdk/README.md").write_text("edited\n")
    with pytest.raises(ReleaseError, match="not clean"):
        cut_release(repo, "amora-sync-sdk", "patch")
    assert _version(repo, "amora-sync-sdk") == _version(ROOT, "amora-sync-sdk")


def test_refuses_an_empty_unreleased_section(repo: Path):
    _clear_unreleased(repo, "amora-sync-sdk")
    with pytest.raises(ReleaseError, match="nothing under '## Unreleased'"):
        cut_release(repo, "amora-sync-sdk", "patch")
    assert _git(repo, "status", "--porcelain") == ""


def test_refuses_first_for_a_released_distribution_and_unknown_names(repo: Path):
    _add_change(repo, "amora-sync-sdk", "Something.")
    assert any(r.distribution == "amora-sync-sdk" for r in read_releases(repo))
    with pytest.raises(ReleaseError, match="already released"):
        cut_release(repo, "amora-sync-sdk", "first")
    with pytest.raises(ReleaseError, match="known: amora-authz-service, amora-device-agent"):
        cut_release(repo, "amora-sdk", "patch")


def test_failed_check_restores_the_tree_and_records_nothing(repo: Path):
    _clear_unreleased(repo, "amora-protocol")  # the SDK requires it
    (repo / "packages/amora-sync-sdk/src/amora_sync/py.typed").unlink()
    _git(repo, "commit", "--quiet", "-am", "lose py.typed")
    _add_change(repo, "amora-sync-sdk", "Something.")
    head, tags = _git(repo, "rev-parse", "HEAD"), _git(repo, "tag", "--list")
    with pytest.raises(ReleaseError, match=r"amora_sync/py.typed missing") as info:
        cut_release(repo, "amora-sync-sdk", "patch")
    assert info.value.problems
    assert _git(repo, "rev-parse", "HEAD") == head
    assert _git(repo, "status", "--porcelain") == ""  # version and changelog restored
    assert _git(repo, "tag", "--list") == tags  # no tag made (a fresh clone may carry none at all)


def test_wheel_rules_name_each_problem(tmp_path: Path):
    dist = find(ROOT, "amora-sync-sdk")
    wheel = tmp_path / "amora_sync_sdk-9.9.9-py3-none-any.whl"
    info = "amora_sync_sdk-9.9.9.dist-info"
    metadata = "Metadata-Version: 2.4\nName: amora-sync-sdk\nVersion: 9.9.9\n\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{info}/METADATA", metadata)
        zf.writestr("amora_sync/__init__.py", "")
        zf.writestr("amora_sync/tests/test_client.py", "")
        zf.writestr("amora_sync/__pycache__/_client.cpython-311.pyc", b"")
        zf.writestr("conftest.py", "")
    problems = "\n".join(check_wheel(wheel, dist, "9.9.9"))
    for expected in (
        "no Requires-Python",
        "no Markdown long description",
        "no License-Expression",
        "no licence file",
        "amora_sync/py.typed missing",
        "test file in the wheel: amora_sync/tests/test_client.py",
        "build debris in the wheel: amora_sync/__pycache__/_client.cpython-311.pyc",
        "stray top-level entry 'conftest.py'",
        "console script amora = amora_sync._cli:main missing",
    ):
        assert expected in problems


def test_cli_help_version_and_refusal(repo: Path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "amora_devtools.release", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603 - this interpreter

    assert "Cut a release" in run("--help").stdout
    assert "--require-latest" in run("--help").stdout
    assert run("--version").stdout.strip()
    (repo / "README.md").write_text("dirty\n")
    done = run("--repo", str(repo), "amora-protocol", "patch")
    assert done.returncode == 1
    assert "the working tree is not clean" in done.stderr


def test_a_refused_commit_restores_the_tree(repo: Path):
    _add_change(repo, "amora-protocol", "Something.")
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'refused by a hook' >&2\nexit 1\n")
    hook.chmod(0o755)
    head, tags = _git(repo, "rev-parse", "HEAD"), _git(repo, "tag", "--list")
    with pytest.raises(ReleaseError, match="refused by a hook"):
        cut_release(repo, "amora-protocol", "patch", today=DAY)
    assert _git(repo, "rev-parse", "HEAD") == head
    assert _git(repo, "status", "--porcelain") == ""
    assert _git(repo, "tag", "--list") == tags


def test_authz_wheel_with_its_alembic_revisions_passes_every_check(tmp_path: Path):
    """check-wheel-contents W004 refused ``migrations/versions/0001_initial.py``; the package opts out of W004 only."""
    packages = tmp_path / "packages"
    ignore = shutil.ignore_patterns("dist", ".hatch", "__pycache__", "*.pyc", ".*_cache")
    shutil.copytree(ROOT / "packages/amora-authz-service", packages / "amora-authz-service", ignore=ignore)
    dist = find(tmp_path, "amora-authz-service")
    wheel, sdist = build(dist, dist.version)
    with zipfile.ZipFile(wheel) as zf:
        revisions = [n for n in zf.namelist() if n.startswith("amora_authz/migrations/versions/0")]
    assert revisions  # the file W004 is about is in the wheel the checks see
    assert check_artefacts(wheel, sdist, dist, dist.version) == []
