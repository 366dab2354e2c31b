"""Process and port helpers shared by the service starters.

Strategy: every service runs as a direct child started with `subprocess.Popen`, in its
own session (so a Ctrl-C in the terminal does not hit it before the harness stops it
in order), tracked in a registry that an `atexit` hook drains, and stopped by its own
PID only: SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self, TypeVar

from amora_devtools._errors import DevtoolsError, ServiceStartError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import TracebackType

__all__ = [
    "ClosedOnExit",
    "ManagedProcess",
    "ServiceHandle",
    "chown_tree",
    "free_port",
    "is_root",
    "remove_at_exit",
    "stop_at_exit",
    "tail",
    "wait_until",
]

# Ports handed out by this process: bind(0) may give the same port twice in a row once
# the probing socket is closed, before the service that was meant to use it binds it.
T = TypeVar("T")

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
_MAX_PORT_TRIES = 50


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free now and was not handed out before.

    Another process may still take it before the caller binds it; the starters retry
    with new ports when a service fails to bind.
    """
    for _ in range(_MAX_PORT_TRIES):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        with _handed_out_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise ServiceStartError("ports", f"no free port on {host} after {_MAX_PORT_TRIES} tries")


def is_root() -> bool:
    """Whether this process runs as root (services then drop to their own users)."""
    return os.geteuid() == 0


def chown_tree(path: Path, user: str) -> None:
    """Give ``path`` and everything below it to ``user`` (and its primary group)."""
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in (*dirs, *files):
            os.chown(Path(root) / name, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def tail(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a log file, or ``""`` if it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.02,
    alive: Callable[[], bool] | None = None,
) -> T | None:
    """Call ``probe`` until it returns something other than ``None``, within ``timeout``.

    This is polling a service for readiness (there is no event to wait on across a
    process boundary), bounded by the deadline and by ``alive``: it stops early when
    the process died.

    Returns:
        The probe's first non-None result, or ``None`` on timeout or when ``alive`` fails.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if alive is not None and not alive():
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


_live: dict[int, ManagedProcess] = {}
_dirs: set[Path] = set()
_stoppers: dict[object, Callable[[], None]] = {}
_live_lock = threading.Lock()
_atexit_registered = False


def _stop_all_at_exit() -> None:
    with _live_lock:
        procs = list(_live.values())
        dirs = list(_dirs)
        stoppers = list(_stoppers.values())
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.stop(timeout=5)
    for stopper in stoppers:
        with contextlib.suppress(Exception):
            stopper()
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


def _register_atexit() -> None:
    global _atexit_registered  # noqa: PLW0603 - one hook per process, set on first use
    with _live_lock:
        if not _atexit_registered:
            atexit.register(_stop_all_at_exit)
            _atexit_registered = True


def stop_at_exit(key: object, stopper: Callable[[], None] | None) -> None:
    """Call ``stopper`` when this process exits (``None`` forgets ``key``).

    For services that are not direct children (pg_ctl daemonizes PostgreSQL).
    """
    _register_atexit()
    with _live_lock:
        if stopper is None:
            _stoppers.pop(key, None)
        else:
            _stoppers[key] = stopper


def remove_at_exit(path: Path, *, keep: bool = False) -> None:
    """Delete ``path`` when this process exits (after its services are stopped).

    For state directories outside the caller's workdir (see the broker and postgres
    modules), so a caller that only stops a service leaves nothing behind.
    ``keep=True`` unregisters a path that was already removed.
    """
    _register_atexit()
    with _live_lock:
        if keep:
            _dirs.discard(path)
        else:
            _dirs.add(path)


class ManagedProcess:
    """A service process started by the harness, stopped by its PID only.

    Output goes to ``log_file`` (opened by the harness, so the service needs no write
    access to it even after it drops privileges).
    """

    def __init__(
        self,
        service: str,
        argv: Sequence[str],
        *,
        log_file: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """Start ``argv``; raise `ServiceStartError` if the program is missing.

        Raises:
            ServiceStartError: The executable is not installed.
        """
        self.service = service
        self.argv = list(argv)
        self.log_file = log_file
        if shutil.which(self.argv[0]) is None:
            raise ServiceStartError(
                service,
                f"{self.argv[0]!r} is not installed (tools/dev installs mosquitto, mpd and postgresql through apt-get)",
            )
        log: IO[bytes]
        with log_file.open("ab") as log:
            self._popen = subprocess.Popen(  # noqa: S603 - fixed argv built by the harness
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        _register_atexit()
        with _live_lock:
            _live[self._popen.pid] = self

    @property
    def pid(self) -> int:
        """The process id."""
        return self._popen.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status once it ended (negative: killed by that signal)."""
        return self._popen.poll()

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to this process (only)."""
        if self.alive():
            self._popen.send_signal(signum)

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Idempotent."""
        try:
            if self.alive():
                self._popen.send_signal(signal.SIGTERM)
                try:
                    self._popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._popen.kill()
                    self._popen.wait(timeout=timeout)
        finally:
            with _live_lock:
                _live.pop(self._popen.pid, None)

    def kill(self, *, timeout: float = 10.0) -> None:
        """SIGKILL (no clean shutdown) and reap. Idempotent."""
        try:
            if self.alive():
                self._popen.kill()
                self._popen.wait(timeout=timeout)
        finally:
            with _live_lock:
                _live.pop(self._popen.pid, None)

    def wait(self, *, timeout: float) -> int:
        """Wait for the process to end on its own; return its exit status.

        Raises:
            subprocess.TimeoutExpired: Still running after ``timeout`` seconds.
        """
        return self._popen.wait(timeout=timeout)


START_TIMEOUT = 15.0  # seconds for a harness service to answer after it was started


class ClosedOnExit:
    """``with`` support for the harness's handles: the block's end calls `close`."""

    def close(self) -> None:
        """Stop what the handle runs and remove what it made (each handle says what)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Return the handle."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """`close` the handle."""
        self.close()


class ServiceHandle(ClosedOnExit):
    """A service the harness runs as one `ManagedProcess` (``_proc``) that it can stop, kill and restart."""

    _proc: ManagedProcess | None

    @property
    def label(self) -> str:
        """What the handle runs, for messages (e.g. ``broker primary``)."""
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """PID of the running process.

        Raises:
            DevtoolsError: It is not running.
        """
        if self._proc is None:
            raise DevtoolsError(f"{self.label} is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.alive()

    def _start(self, *, timeout: float) -> None:
        """Start the process on the handle's ports and state; wait until it answers."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop cleanly (SIGTERM: the service saves what it keeps). Idempotent."""
        if self._proc is not None:
            self._proc.stop()

    def kill(self) -> None:
        """Kill abruptly (SIGKILL: as a crash; nothing is saved). Idempotent."""
        if self._proc is not None:
            self._proc.kill()

    def restart(self, *, timeout: float = START_TIMEOUT) -> None:
        """Stop (if running) and start again on the same ports with the same state.

        Raises:
            ServiceStartError: It did not come back (e.g. a port was taken meanwhile).
        """
        self.stop()
        self._start(timeout=timeout)
