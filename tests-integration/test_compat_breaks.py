"""The compatibility suite fails on a breaking change and passes on a compatible one.

Each test copies the current protocol package (source and vector generator) to a temporary
folder, edits the copy, regenerates its vectors with it, and runs the suite's protocol check
(``check_vectors``: the previous release's vectors through the copy, the copy's vectors
through the previous release). Nothing in the repository is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amora_devtools.compat import PreviousEnv, check_vectors, previous_env

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "packages" / "amora-protocol"

pytestmark = pytest.mark.slow

# DeviceState's optional volume, in the schema and in the generator's sample state.
SCHEMA_LINE = "    volume: Volume | None = None\n"
SAMPLE_LINE = "        volume=35,\n"


@pytest.fixture(scope="session")
def previous_protocol() -> PreviousEnv:
    return previous_env(ROOT, "amora-protocol")


def _edited_copy(tmp_path: Path, edits: dict[str, tuple[str, str]]) -> Path:
    """Copy src/ and vectors/ of the protocol package, apply ``file -> (old, new)``, regenerate vectors."""
    copy = tmp_path / "amora-protocol"
    shutil.copytree(PROTOCOL / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROTOCOL / "vectors", copy / "vectors", ignore=shutil.ignore_patterns("__pycache__"))
    for relative, (old, new) in edits.items():
        path = copy / relative
        text = path.read_text()
        assert text.count(old) == 1, f"{relative} no longer has exactly one {old!r}: update this test"
        path.write_text(text.replace(old, new))
    env = {**os.environ, "PYTHONPATH": str(copy / "src")}
    subprocess.run(  # noqa: S603 - fixed argv: this interpreter and the copied generator
        [sys.executable, str(copy / "vectors" / "generate.py")], env=env, check=True, capture_output=True, timeout=120
    )
    return copy


def test_renamed_field_fails_the_suite(tmp_path: Path, previous_protocol: PreviousEnv):
    copy = _edited_copy(
        tmp_path,
        {
            "src/amora_protocol/_messages.py": (SCHEMA_LINE, SCHEMA_LINE.replace("volume", "volume_percent")),
            "vectors/generate.py": (SAMPLE_LINE, SAMPLE_LINE.replace("volume", "volume_percent")),
        },
    )
    report = check_vectors(
        ROOT, previous_protocol, current_vectors=copy / "vectors" / "envelopes.json", current_source=copy / "src"
    )
    # Receivers of the renamed package lose the volume every previous sender sends.
    assert report.failures
    assert any("previous vectors, current package: state:" in f and "volume" in f for f in report.failures), (
        report.failures
    )


def test_compatible_addition_passes_the_suite(tmp_path: Path, previous_protocol: PreviousEnv):
    # A new optional field, set by the new sender: old receivers ignore it, new receivers
    # default it when old senders leave it out.
    copy = _edited_copy(
        tmp_path,
        {
            "src/amora_protocol/_messages.py": (
                SCHEMA_LINE,
                SCHEMA_LINE + "    replay_gain: ShortText | None = None\n",
            ),
            "vectors/generate.py": (SAMPLE_LINE, SAMPLE_LINE + '        replay_gain="track",\n'),
        },
    )
    vectors = copy / "vectors" / "envelopes.json"
    assert '"replay_gain": "track"' in vectors.read_text()  # the new field is really on the wire
    report = check_vectors(ROOT, previous_protocol, current_vectors=vectors, current_source=copy / "src")
    assert report.failures == []
    assert report.new_vectors_old_package["checked"] >= 20
