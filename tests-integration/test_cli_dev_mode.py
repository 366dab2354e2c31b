"""The published ``amora`` CLI in development mode against the stack.json a real stack writes.

The stack is the one ``hatch run stack:up`` runs (`amora_devtools.stack.Stack`: two brokers, the
authz service with its development issuer, players on MPD and simulated); the CLI runs as its
own process with nothing but ``--dev STACK_JSON --user NAME`` (or the environment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from amora_devtools.stack import STACK_FORMAT, Stack

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.services, pytest.mark.slow]

_CLI_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the module (alice: player-1 and -2; bob: player-3)."""
    users = {"alice": (0, 1), "bob": (2,), "carol": ()}
    with Stack(tmp_path_factory.mktemp("dev-mode") / "stack", players=3, users=users) as running:
        yield running


def _amora(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AMORA_")}
    clean["AMORA_CONFIG"] = "/nonexistent/config.toml"
    return subprocess.run(  # noqa: S603 - this interpreter, the SDK's module
        [sys.executable, "-m", "amora_sync", *argv],
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=_CLI_TIMEOUT_S,
        check=False,
    )


def test_the_cli_uses_the_stack_file_a_running_stack_wrote(stack: Stack):
    stack_file = stack.state_dir / "stack.json"
    assert json.loads(stack_file.read_text())["format"] == STACK_FORMAT

    listed = _amora("--dev", str(stack_file), "--user", "alice", "devices", "--json", "--settle", "5")
    assert listed.returncode == 0, listed.stderr
    rows = {row["device_id"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert set(rows) == {"player-1", "player-2"}  # alice's players, nobody else's
    assert rows["player-1"]["online"] is True

    sent = _amora("--dev", str(stack_file), "--user", "alice", "send", "player-2", "volume", "33")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["status"] == "succeeded"

    # bob's player is not in alice's session: a usage error, named.
    refused = _amora("--dev", str(stack_file), "--user", "alice", "send", "player-3", "pause")
    assert refused.returncode == 2
    assert "player-3" in refused.stderr


def test_development_mode_from_the_environment(stack: Stack):
    env = {"AMORA_DEV_STACK": str(stack.state_dir / "stack.json"), "AMORA_DEV_USER": "bob"}
    listed = _amora("devices", "--json", "--settle", "5", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["device_id"] for line in listed.stdout.splitlines()] == ["player-3"]


def test_a_stack_file_of_another_format_is_refused_before_anything_is_tried(stack: Stack, tmp_path: Path):
    written = json.loads((stack.state_dir / "stack.json").read_text())
    newer = tmp_path / "stack.json"
    newer.write_text(json.dumps({**written, "format": STACK_FORMAT + 1}))
    refused = _amora("--dev", str(newer), "--user", "alice", "devices")
    assert refused.returncode == 2
    assert f"{newer} is stack.json format {STACK_FORMAT + 1}; this amora CLI reads format {STACK_FORMAT}" in (
        refused.stderr
    )
    assert "hatch run stack:up" in refused.stderr
