"""The compatibility suite's machinery: previous releases rebuilt from source, and the probes.

``previous_env`` rebuilds the latest recorded release of a distribution (``releases.toml``)
from its commit — a ``git worktree`` at that commit and ``hatch build`` — and installs it,
with the sibling wheels built from the same commit, into a venv of its own. Wheels and venvs
are cached under ``.compat-cache/`` (gitignored), keyed by commit and interpreter, so only
the first run after a release pays for the build.

The probes are standalone scripts (``vectors_check.py``, ``sdk_scenario.py``) that import
only the Amora packages and their dependencies, so the same file runs with the current code
and inside a previous release's venv. ``tests-integration/test_compat.py`` drives them.
"""

from amora_devtools.compat._previous import (
    CACHE_DIR,
    PreviousEnv,
    build_previous_wheels,
    previous_env,
    previous_release,
    probe,
)
from amora_devtools.compat._vectors import VECTORS_PATH, VectorReport, check_vectors

__all__ = [
    "CACHE_DIR",
    "VECTORS_PATH",
    "PreviousEnv",
    "VectorReport",
    "build_previous_wheels",
    "check_vectors",
    "previous_env",
    "previous_release",
    "probe",
]
