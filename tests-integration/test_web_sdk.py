"""The TypeScript browser SDK (packages/amora-sync-web): its Node suites run from pytest.

`npm ci` installs the locked packages when they are missing (tools/dev does it first); the
suites compile with `tsc --strict` and run under Node's test runner. The unit suite includes
every protocol vector; the end-to-end suite drives Debian's Chromium against a real stack.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parent.parent / "packages" / "amora-sync-web"


def _npm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: run tools/dev test (it installs nodejs and npm)")
    return subprocess.run(  # noqa: S603 - fixed argv
        [npm, *args],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "CI": "1"},
    )


@pytest.fixture(scope="module")
def built() -> Path:
    """The package installed from its lockfile and compiled."""
    if not (WEB / "node_modules" / ".package-lock.json").exists():
        installed = _npm("ci", "--no-audit", "--no-fund")
        assert installed.returncode == 0, installed.stdout + installed.stderr
    build = _npm("run", "build")
    assert build.returncode == 0, build.stdout + build.stderr
    return WEB


def test_unit_and_vector_suites_pass(built: Path) -> None:
    assert (built / "build" / "test" / "vectors.test.js").is_file()
    result = _npm("run", "test:unit")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "# fail 0" in output
    assert "# pass 0" not in output, output
