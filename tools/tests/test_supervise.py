"""The stack's supervisor restarts dead units with growing delays and leaves held ones alone."""

from __future__ import annotations

import signal
import time
from pathlib import Path  # noqa: TC003 - pytest resolves fixture annotations

from amora_devtools._proc import ManagedProcess, wait_until
from amora_devtools.supervise import Supervisor


class Sleeper:
    """A real child process, restarted by the supervisor like a broker or an agent."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.process = ManagedProcess("sleeper", ["sleep", "600"], log_file=log)
        self.starts = [time.monotonic()]

    def alive(self) -> bool:
        return self.process.alive()

    def restart(self) -> None:
        self.process = ManagedProcess("sleeper", ["sleep", "600"], log_file=self.log)
        self.starts.append(time.monotonic())


def _restarted(supervisor: Supervisor, times: int) -> bool:
    def done() -> bool | None:
        return supervisor.restarts["sleeper"] >= times or None

    return wait_until(done, timeout=10) is not None


def test_dead_units_come_back_with_backoff_and_held_ones_stay_down(tmp_path: Path) -> None:
    unit = Sleeper(tmp_path / "sleeper.log")
    supervisor = Supervisor(tmp_path / "supervisor.log", initial_s=0.2, maximum_s=0.8, stable_s=30, poll_s=0.02)
    supervisor.watch("sleeper", alive=unit.alive, restart=unit.restart)
    supervisor.start()
    try:
        deaths: list[float] = []
        for restarts in (1, 2, 3):
            deaths.append(time.monotonic())
            unit.process.signal(signal.SIGKILL)
            assert _restarted(supervisor, restarts), "no restart"
            assert unit.alive()
        delays = [start - death for start, death in zip(unit.starts[1:], deaths, strict=True)]
        # 0.2 s, then 0.4 s, then 0.8 s: each crash in a row waits longer (poll slack allowed).
        assert delays[0] >= 0.2
        assert delays[1] >= 0.4
        assert delays[2] >= 0.8
        assert "sleeper died; restarting in 0.2 s" in (tmp_path / "supervisor.log").read_text()

        # A stopped process is alive: left alone (liveness is the clients' business).
        unit.process.signal(signal.SIGSTOP)
        time.sleep(0.3)  # several polls; nothing may happen
        assert supervisor.restarts["sleeper"] == 3
        unit.process.signal(signal.SIGCONT)

        supervisor.hold("sleeper")
        unit.process.kill()
        time.sleep(1.2)  # longer than the largest delay: a restart would have happened
        assert supervisor.restarts["sleeper"] == 3
        assert not unit.alive()
        supervisor.release("sleeper")
        assert _restarted(supervisor, 4)
    finally:
        supervisor.stop()
        unit.process.stop()


def test_an_exit_status_named_final_is_not_restarted(tmp_path: Path) -> None:
    # As the agent's systemd unit: a configuration error (status 2) is not restarted.
    process = ManagedProcess("config-error", ["sh", "-c", "exit 2"], log_file=tmp_path / "unit.log")
    restarted: list[float] = []
    supervisor = Supervisor(tmp_path / "supervisor.log", initial_s=0.05, poll_s=0.02)
    supervisor.watch(
        "config-error",
        alive=process.alive,
        restart=lambda: restarted.append(time.monotonic()),
        final=lambda: process.returncode == 2,
    )
    supervisor.start()
    try:
        assert process.wait(timeout=10) == 2
        log = tmp_path / "supervisor.log"
        assert wait_until(lambda: "forbids a restart" in (log.read_text() if log.exists() else "") or None, timeout=10)
        time.sleep(0.3)  # well past the restart delay: nothing may happen
        assert restarted == []
    finally:
        supervisor.stop()
