"""The README's first command: the live demo runs end to end and stops everything it started."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.services
@pytest.mark.slow
@pytest.mark.parametrize("credentials", ["dynsec", "token"])
def test_demo_runs_its_script_and_cleans_up(tmp_path, credentials):
    state_dir = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "amora_devtools.demo", "--state-dir", str(state_dir), "--credentials", credentials],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Stack ready" in out
    assert f"app sessions: {credentials}" in out
    steps = re.findall(r"^\s+player-\d+\s+.+?\s+(succeeded|failed|rejected|\w+Error)", out, flags=re.MULTILINE)
    assert len(steps) == 12, out
    assert steps.count("succeeded") >= 11, out  # MPD itself may stall once (see the agent README)
    assert "end to end: median" in out
    assert "everything it started is stopped" in out
    # Nothing the demo started is left: every PID it recorded is gone.
    info = json.loads((state_dir / "stack.json").read_text())
    assert info["broker_credentials"] == credentials
    pids = [p["pid"] for p in info["players"].values()]
    pids += [*info["pids"]["brokers"], info["pids"]["authz"], info["pids"]["mpd"]]
    assert len(pids) == 4 + 2 + 2
    for pid in pids:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text().lower(), f"PID {pid} still runs"
