"""The stack's supervisor restarts dead units with growing delays and leaves held ones alone.

The supervisor's clock is the test's: time moves only when the test says so, and "nothing
happened" is checked after counted poll rounds, never after a sleep.
"""

from __future__ import annotations

import signal
from pathlib import Path  # noqa: TC003 - pytest resolves fixture annotations

from amora_devtools._proc import ManagedProcess, wait_until
from amora_devtools.supervise import Supervisor


class Clock:
    """Monotonic seconds that move only when `advance` is called."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sleeper:
    """A real child process, restarted by the supervisor like a broker or an agent."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.process = ManagedProcess("sleeper", ["sleep", "600"], log_file=log)

    def alive(self) -> bool:
        return self.process.alive()

    def restart(self) -> None:
        self.process = ManagedProcess("sleeper", ["sleep", "600"], log_file=self.log)


def _rounds(supervisor: Supervisor, count: int = 3) -> None:
    """Wait until the supervisor finished ``count`` more full rounds over its units."""
    target = supervisor.polls + count
    assert wait_until(lambda: supervisor.polls >= target or None, timeout=10), "the supervisor stopped polling"


def _restarted(supervisor: Supervisor, times: int) -> bool:
    return wait_until(lambda: supervisor.restarts["sleeper"] >= times or None, timeout=10) is not None


def _logged(log: Path, line: str) -> None:
    assert wait_until(lambda: line in (log.read_text() if log.exists() else "") or None, timeout=10), line


def test_dead_units_come_back_with_backoff_and_held_ones_stay_down(tmp_path: Path) -> None:
    clock = Clock()
    log = tmp_path / "supervisor.log"
    unit = Sleeper(tmp_path / "sleeper.log")
    supervisor = Supervisor(log, initial_s=0.2, maximum_s=0.8, stable_s=30, poll_s=0.01, clock=clock)
    supervisor.watch("sleeper", alive=unit.alive, restart=unit.restart)
    supervisor.start()
    try:
        # 0.2 s, then 0.4 s, then 0.8 s: each crash in a row waits longer, and not a moment less.
        for restarts, delay in ((1, 0.2), (2, 0.4), (3, 0.8)):
            unit.process.signal(signal.SIGKILL)
            _logged(log, f"sleeper died; restarting in {delay:.1f} s")
            clock.advance(delay - 0.01)
            _rounds(supervisor)
            assert supervisor.restarts["sleeper"] == restarts - 1, "restarted before its delay"
            clock.advance(delay)  # past it (an exact 0.01 more could fall short in floating point)
            assert _restarted(supervisor, restarts), "no restart"
            assert unit.alive()

        # A stopped process is alive: left alone (liveness is the clients' business).
        unit.process.signal(signal.SIGSTOP)
        clock.advance(5)
        _rounds(supervisor)
        assert supervisor.restarts["sleeper"] == 3
        unit.process.signal(signal.SIGCONT)

        supervisor.hold("sleeper")
        unit.process.kill()
        clock.advance(5)  # longer than the largest delay: a restart would be due
        _rounds(supervisor)
        assert supervisor.restarts["sleeper"] == 3
        assert not unit.alive()
        supervisor.release("sleeper")
        assert wait_until(lambda: log.read_text().count("sleeper died") >= 4 or None, timeout=10), "death not seen"
        clock.advance(5)
        assert _restarted(supervisor, 4), "no restart after release"
    finally:
        supervisor.stop()
        unit.process.stop()


def test_an_exit_status_named_final_is_not_restarted(tmp_path: Path) -> None:
    # As the agent's systemd unit: a configuration error (status 2) is not restarted.
    clock = Clock()
    process = ManagedProcess("config-error", ["sh", "-c", "exit 2"], log_file=tmp_path / "unit.log")
    restarted: list[float] = []
    log = tmp_path / "supervisor.log"
    supervisor = Supervisor(log, initial_s=0.05, poll_s=0.01, clock=clock)
    supervisor.watch(
        "config-error",
        alive=process.alive,
        restart=lambda: restarted.append(clock()),
        final=lambda: process.returncode == 2,
    )
    supervisor.start()
    try:
        assert process.wait(timeout=10) == 2
        _logged(log, "forbids a restart")
        clock.advance(60)  # far past any restart delay
        _rounds(supervisor)
        assert restarted == []
    finally:
        supervisor.stop()
