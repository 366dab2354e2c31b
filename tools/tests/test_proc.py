from __future__ import annotations

import sys

import pytest

from amora_devtools import ServiceStartError
from amora_devtools._proc import ManagedProcess, free_port, wait_until


def test_free_ports_are_not_handed_out_twice():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)


def test_a_missing_program_is_a_clear_start_error(tmp_path):
    with pytest.raises(ServiceStartError, match="not installed"):
        ManagedProcess("nothing", ["amora-no-such-program"], log_file=tmp_path / "log")


def test_stop_ends_the_process_and_is_idempotent(tmp_path):
    proc = ManagedProcess(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        log_file=tmp_path / "log",
    )
    assert proc.alive()
    proc.stop()
    proc.stop()
    assert not proc.alive()
    assert proc.returncode is not None


def test_kill_escalates_for_a_process_that_ignores_sigterm(tmp_path):
    started = tmp_path / "started"
    code = (
        "import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(started)!r}).touch(); time.sleep(60)"
    )
    proc = ManagedProcess("stubborn", [sys.executable, "-c", code], log_file=tmp_path / "log")
    assert wait_until(lambda: True if started.exists() else None, timeout=10) is True
    proc.stop(timeout=0.2)
    assert proc.returncode == -9


def test_wait_until_stops_early_when_the_process_died():
    assert wait_until(lambda: None, timeout=60, alive=lambda: False) is None
