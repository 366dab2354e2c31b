"""Run mypy (strict, settings from the root pyproject.toml) over every workspace member.

Each member is checked on its own, from its own folder, so that the `tests`
packages of different members do not collide as one module name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Test modules there are top-level (test_*.py): the "tests.*" override cannot name them.
TEST_FLAGS = ["--allow-untyped-defs", "--allow-incomplete-defs", "--check-untyped-defs"]


def members() -> list[tuple[Path, list[str], str]]:
    """Return (folder, targets, mypy path) for each member that has Python code."""
    found: list[tuple[Path, list[str], str]] = []
    for pkg in sorted((ROOT / "packages").iterdir()):
        if (pkg / "src").is_dir() and (pkg / "pyproject.toml").is_file():  # not the npm package
            targets = [t for t in ("src", "tests") if (pkg / t).is_dir()]
            # Test helper modules (on pytest's pythonpath too, see pyproject.toml).
            support = ":tests/support" if (pkg / "tests" / "support").is_dir() else ""
            found.append((pkg, targets, "src" + support))
    tools = ROOT / "tools"
    targets = [
        t for t in ("amora_devtools", "bench", "tests", "typecheck.py", "deploy_check.py") if (tools / t).exists()
    ]
    found.append((tools, targets, ".:bench"))
    # Example applications (examples/*): their package and tests folders.
    for pyproject in sorted((ROOT / "examples").glob("*/pyproject.toml")):
        folder = pyproject.parent
        targets = sorted(p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.py")))
        found.append((folder, targets, "."))
    # The broker image's entrypoint (standard library only, not a package).
    found.append((ROOT / "infra" / "images" / "broker", ["amora_broker.py"], "."))
    integ = ROOT / "tests-integration"
    if any(integ.glob("**/*.py")):
        found.append((integ, [".", *TEST_FLAGS], "."))
    return found


def main() -> int:
    """Check every member; return non-zero if any fails."""
    failed = 0
    config = str(ROOT / "pyproject.toml")
    for folder, targets, mypy_path in members():
        print(f"mypy: {folder.relative_to(ROOT)}", flush=True)
        env = {**os.environ, "MYPYPATH": mypy_path}
        cmd = [sys.executable, "-m", "mypy", "--config-file", config, *targets]
        failed |= subprocess.call(cmd, cwd=folder, env=env)  # noqa: S603 - fixed argv
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
