"""Start a throwaway PostgreSQL server (Debian's) for tests: loopback, trust auth.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres``
user and lives in a directory under the system temporary directory that it owns
(pytest's temporary directories are private to root). The server is started and
stopped with ``pg_ctl`` (``-w``: it returns once the server accepts connections).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from amora_devtools._errors import DevtoolsError, ServiceStartError
from amora_devtools._proc import (
    ClosedOnExit,
    chown_tree,
    free_port,
    is_root,
    remove_at_exit,
    stop_at_exit,
    tail,
)

__all__ = ["PostgresProcess", "start_postgres"]

_USER: Final = "amora"
_DATABASE: Final = "amora"
_OS_USER: Final = "postgres"
_TIMEOUT: Final = 60.0
_START_ATTEMPTS: Final = 3


def _bin_dir() -> Path:
    override = os.environ.get("AMORA_PG_BINDIR")
    if override:
        return Path(override)
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parts[-3].isdigit()]
    if found:
        return max(found, key=lambda p: int(p.parts[-3])).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise ServiceStartError("postgres", "initdb not found (apt-get install postgresql)")
    return Path(initdb).parent


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", _OS_USER, "--", *argv] if is_root() else argv


@dataclass(eq=False)
class PostgresProcess(ClosedOnExit):
    """A running PostgreSQL started by `start_postgres`.

    Attributes:
        host: ``127.0.0.1``.
        port: Its TCP port.
        user: Superuser name (trust authentication on loopback, no password).
        database: A database made for the caller.
        data_dir: The cluster directory (owned by ``postgres`` when run as root).
        workdir: Where ``postgres.log`` goes.
    """

    host: str
    port: int
    user: str
    database: str
    data_dir: Path
    workdir: Path
    _bin: Path
    _owns_root: Path | None = None
    _running: bool = False

    @property
    def dsn(self) -> str:
        """``postgresql://user@host:port/database``."""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        """The DSN of another database on this server."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def log_file(self) -> Path:
        """The server log."""
        return self.data_dir.parent / "postgres.log"

    @property
    def pid(self) -> int:
        """The postmaster's PID (from ``postmaster.pid``).

        Raises:
            DevtoolsError: Not running.
        """
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            raise DevtoolsError("postgres is not running") from exc

    def _run(self, argv: list[str], what: str) -> None:
        try:
            result = subprocess.run(  # noqa: S603 - fixed argv built by the harness
                _as_owner(argv), capture_output=True, text=True, timeout=_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceStartError("postgres", f"{what} failed: {exc!r}") from exc
        if result.returncode != 0:
            log = (result.stdout + result.stderr).strip() + "\n" + tail(self.log_file)
            raise ServiceStartError("postgres", f"{what} failed", log_tail=log)

    def create_database(self, name: str) -> str:
        """Create a database; return its DSN.

        Raises:
            ServiceStartError: createdb failed (e.g. it exists).
        """
        self._run(
            [str(self._bin / "createdb"), "-h", self.host, "-p", str(self.port), "-U", self.user, name],
            f"createdb {name}",
        )
        return self.dsn_for(name)

    def _start(self) -> None:
        opts = f"-p {self.port} -k {self.data_dir.parent} -c listen_addresses={self.host} -c fsync=off"
        self._run(
            [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-o", opts, "-l", str(self.log_file), "-w", "start"],
            "pg_ctl start",
        )
        self._running = True
        stop_at_exit(self, self.stop)

    def stop(self) -> None:
        """Stop (``pg_ctl -m fast stop``); the cluster stays until `close`. Idempotent."""
        if self._running:
            self._running = False
            stop_at_exit(self, None)
            self._run([str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], "pg_ctl stop")

    def close(self) -> None:
        """Stop and delete the cluster. Idempotent."""
        try:
            self.stop()
        finally:
            if self._owns_root is not None:
                log = self.log_file
                if log.exists():
                    shutil.copyfile(log, self.workdir / "postgres.log")
                shutil.rmtree(self._owns_root, ignore_errors=True)
                remove_at_exit(self._owns_root, keep=True)
                self._owns_root = None


def start_postgres(workdir: Path | str, *, host: str = "127.0.0.1") -> PostgresProcess:
    """Run initdb for a fresh cluster, start it on a free port, and create database ``amora``.

    Args:
        workdir: Created if missing; the server log is copied there on `close`.
        host: Loopback address to listen on.

    Returns:
        The running server (superuser ``amora``, trust auth); `PostgresProcess.close` it.

    Raises:
        ServiceStartError: PostgreSQL is missing or did not start.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bin_dir = _bin_dir()
    if is_root():
        root = Path(tempfile.mkdtemp(prefix="amora-postgres-"))
        remove_at_exit(root)
        root.chmod(0o700)
        chown_tree(root, _OS_USER)
        owned: Path | None = root
    else:
        root = workdir / "cluster"
        root.mkdir(exist_ok=True)
        owned = None
    data_dir = root / "data"
    server = PostgresProcess(
        host=host, port=0, user=_USER, database=_DATABASE, data_dir=data_dir, workdir=workdir,
        _bin=bin_dir, _owns_root=owned,
    )  # fmt: skip
    try:
        server._run(  # noqa: SLF001 - the factory of its own class
            [str(bin_dir / "initdb"), "-D", str(data_dir), "-A", "trust", "-U", _USER, "-E", "UTF8", "--no-sync"],
            "initdb",
        )
        for attempt in range(_START_ATTEMPTS):
            server.port = free_port(host)
            try:
                server._start()  # noqa: SLF001
                break
            except ServiceStartError as exc:
                if "already in use" not in exc.log_tail or attempt == _START_ATTEMPTS - 1:
                    raise
        server.create_database(_DATABASE)
    except BaseException:
        server.close()
        raise
    return server
