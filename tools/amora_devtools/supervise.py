"""Restart what dies, with backoff: the local stack's stand-in for systemd and Kubernetes.

Strategy: in production a crashed broker or agent is restarted by systemd (``Restart=`` with
``RestartSec=``) or by the orchestrator (``CrashLoopBackOff``: 10 s doubling to 5 min, reset
after a stable run). The local stack does the same so that faults can be rehearsed: a thread
polls each unit (a child process has no event to wait on across ``subprocess``; the harness
polls children the same way elsewhere), and restarts a dead one after a delay that starts at
``initial_s``, doubles on each restart up to ``maximum_s``, and goes back to ``initial_s`` once
the unit has stayed up for ``stable_s``. A stopped (SIGSTOP) process is alive: like systemd
without a watchdog, the supervisor leaves it alone, which is what the clients' own liveness
probes are for. Like the agent's unit (``infra/systemd``: ``Restart=always`` with
``RestartPreventExitStatus=2``), a unit that exits with a status it names as final (a
configuration error) is not restarted. A unit can be held (a test that wants it to stay down).
The clock is injectable and ``polls`` counts finished rounds, so tests wait for counted rounds
and move time themselves instead of sleeping and measuring.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amora_devtools._errors import DevtoolsError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["Supervisor"]


@dataclass
class _Unit:
    alive: Callable[[], bool]
    restart: Callable[[], None]
    delay_s: float
    final: Callable[[], bool] = lambda: False
    held: bool = False
    up_since: float | None = None
    retry_at: float | None = None


class Supervisor:
    """Watches units and restarts the dead ones with exponential backoff.

    Args:
        log_file: Where each death and restart is written (one line each).
        initial_s: Delay before the first restart.
        maximum_s: Largest delay between restarts.
        stable_s: Time up after which the delay goes back to ``initial_s``.
        poll_s: How often units are checked.
        clock: Monotonic seconds, for the delays (tests pass one they advance).
    """

    def __init__(  # noqa: PLR0913 - all but the log file are keyword-only tunables
        self,
        log_file: Path,
        *,
        initial_s: float = 0.5,
        maximum_s: float = 10.0,
        stable_s: float = 10.0,
        poll_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a supervisor that watches nothing yet; `start` begins watching."""
        self._log_file = log_file
        self._initial_s = initial_s
        self._maximum_s = maximum_s
        self._stable_s = stable_s
        self._poll_s = poll_s
        self._clock = clock
        self._units: dict[str, _Unit] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts: Counter[str] = Counter()
        self.polls = 0  # finished rounds over every unit (what tests wait for)

    @property
    def lock(self) -> threading.RLock:
        """Held while a unit is checked or restarted (take it to start a unit by hand)."""
        return self._lock

    def watch(
        self,
        name: str,
        *,
        alive: Callable[[], bool],
        restart: Callable[[], None],
        final: Callable[[], bool] | None = None,
    ) -> None:
        """Supervise a unit: ``restart`` is called when ``alive`` says it died.

        ``final`` says whether the way it ended forbids a restart (systemd's
        ``RestartPreventExitStatus``); it stays down until restarted by hand.
        """
        with self._lock:
            unit = _Unit(alive, restart, self._initial_s, up_since=self._clock())
            if final is not None:
                unit.final = final
            self._units[name] = unit

    def hold(self, name: str) -> None:
        """Leave ``name`` alone (dead or not) until `release`."""
        with self._lock:
            self._units[name].held = True

    def release(self, name: str) -> None:
        """Supervise ``name`` again."""
        with self._lock:
            self._units[name].held = False

    def start(self) -> None:
        """Start watching in a background thread."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="amora-stack.supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the units are stopped on purpose)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _note(self, line: str) -> None:
        with contextlib.suppress(OSError), self._log_file.open("a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def _loop(self) -> None:
        while not self._stopping.wait(self._poll_s):
            with self._lock:
                for name, unit in self._units.items():
                    if not unit.held and not self._stopping.is_set():
                        self._check(name, unit)
                self.polls += 1

    def _check(self, name: str, unit: _Unit) -> None:
        now = self._clock()
        if unit.alive():
            if unit.up_since is None:
                unit.up_since = now
            elif now - unit.up_since >= self._stable_s:
                unit.delay_s = self._initial_s
            return
        if unit.retry_at is None:
            if unit.final():
                if unit.up_since is not None:
                    self._note(f"{name} exited with a status that forbids a restart; left down")
                unit.up_since = None
                return
            unit.up_since = None
            unit.retry_at = now + unit.delay_s
            self._note(f"{name} died; restarting in {unit.delay_s:.1f} s")
            return
        if now < unit.retry_at:
            return
        unit.retry_at = None
        unit.delay_s = min(unit.delay_s * 2, self._maximum_s)
        try:
            unit.restart()
        except DevtoolsError as exc:
            self._note(f"{name} restart failed: {exc}")
            return
        self.restarts[name] += 1
        self._note(f"{name} restarted (restart {self.restarts[name]})")
