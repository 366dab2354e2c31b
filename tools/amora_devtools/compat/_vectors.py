"""Previous protocol vectors against the current package, and current vectors against the previous one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_devtools._errors import DevtoolsError
from amora_devtools.compat._previous import probe

if TYPE_CHECKING:
    from amora_devtools.compat._previous import PreviousEnv

__all__ = ["VECTORS_PATH", "VectorReport", "check_vectors"]

VECTORS_PATH = "packages/amora-protocol/vectors/envelopes.json"


@dataclass(frozen=True)
class VectorReport:
    """What the two directions found.

    Attributes:
        old_vectors_new_package: The report of the current package on the previous release's vectors.
        new_vectors_old_package: The report of the previous package on the current vectors.
    """

    old_vectors_new_package: dict[str, Any]
    new_vectors_old_package: dict[str, Any]

    @property
    def failures(self) -> list[str]:
        """Every failure, prefixed by its direction."""
        return [f"previous vectors, current package: {f}" for f in self.old_vectors_new_package["failures"]] + [
            f"current vectors, previous package: {f}" for f in self.new_vectors_old_package["failures"]
        ]


def _report(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)  # noqa: S603 - fixed argv
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise DevtoolsError(f"vector check gave no report (exit {done.returncode}):\n{done.stderr[-3000:]}") from None
    if not isinstance(report, dict):
        raise DevtoolsError(f"vector check gave {report!r}")
    return report


def check_vectors(
    root: Path,
    previous: PreviousEnv,
    *,
    current_vectors: Path | None = None,
    current_source: Path | None = None,
) -> VectorReport:
    """Run both directions.

    Args:
        root: The repository (the previous vectors come from ``git show COMMIT:...``).
        previous: The previous protocol release's venv.
        current_vectors: The current vector file (default: the working tree's).
        current_source: A ``src`` folder to import the current ``amora_protocol`` from instead
            of this environment's (the suite's own test uses it for a modified copy).
    """
    old = subprocess.run(  # noqa: S603 - fixed argv
        ["git", "-C", str(root), "show", f"{previous.release.commit}:{VECTORS_PATH}"],  # noqa: S607 - git from PATH
        capture_output=True,
        text=True,
        check=False,
    )
    if old.returncode != 0:
        raise DevtoolsError(f"cannot read {VECTORS_PATH} at {previous.release.commit[:12]}: {old.stderr.strip()}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if current_source is not None:
        env["PYTHONPATH"] = str(current_source)
    script = str(probe("vectors_check.py"))
    with tempfile.TemporaryDirectory(prefix="amora-vectors-") as tmp:
        old_file = Path(tmp) / "previous-envelopes.json"
        old_file.write_text(old.stdout)
        forward = _report([sys.executable, script, str(old_file), "--mode", "exact"], env)
    vectors = current_vectors or root / VECTORS_PATH
    backward = previous.run(probe("vectors_check.py"), str(vectors), "--mode", "receiver")
    try:
        back_report = json.loads(backward.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise DevtoolsError(f"previous package's vector check gave no report:\n{backward.stderr[-3000:]}") from None
    return VectorReport(forward, back_report)
