"""Start a real MPD for tests and manual work: null audio output, software mixer.

Each MPD gets a free loopback port, its own database, state and playlist files under
its work directory, and a music directory of short generated FLAC tracks
(`amora_devtools.music`). It is handed back once its database lists every track.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import mpd

from amora_devtools._errors import ServiceStartError
from amora_devtools._proc import ManagedProcess, ServiceHandle, free_port, tail, wait_until
from amora_devtools.music import DEFAULT_TRACKS, Track, write_library

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["MpdProcess", "start_mpd"]

_START_TIMEOUT: Final = 15.0
_START_ATTEMPTS: Final = 3

_CONFIG: Final = """\
# Written by amora_devtools.mpd for development and tests.
music_directory     "{music_dir}"
playlist_directory  "{workdir}/playlists"
db_file             "{workdir}/database"
state_file          "{workdir}/state"
sticker_file        "{workdir}/sticker.sql"
bind_to_address     "{host}"
port                "{port}"
auto_update         "no"
zeroconf_enabled    "no"
filesystem_charset  "UTF-8"
log_level           "notice"
audio_output {{
    type        "null"
    name        "amora-null"
    # Without a software mixer the null output has no volume (setvol fails).
    mixer_type  "software"
}}
"""


@dataclass(eq=False)
class MpdProcess(ServiceHandle):
    """A running MPD started by `start_mpd`.

    Attributes:
        host: ``127.0.0.1``.
        port: Its TCP port.
        music_dir: The music directory.
        tracks: The generated tracks in it (``file`` is the MPD URI).
        workdir: Config, database, state, playlists and ``mpd.log``.
    """

    host: str
    port: int
    music_dir: Path
    tracks: tuple[Track, ...]
    workdir: Path
    _proc: ManagedProcess | None = field(default=None, repr=False)

    @property
    def config_file(self) -> Path:
        """The generated mpd.conf."""
        return self.workdir / "mpd.conf"

    @property
    def log_file(self) -> Path:
        """MPD's log (stderr)."""
        return self.workdir / "mpd.log"

    @property
    def label(self) -> str:
        """What runs, for messages."""
        return "mpd"

    @contextlib.contextmanager
    def client(self, *, timeout: float = 5.0) -> Iterator[mpd.MPDClient]:
        """A connected synchronous python-mpd2 client, disconnected on exit."""
        client = mpd.MPDClient()
        client.timeout = timeout
        client.connect(self.host, self.port)
        try:
            yield client
        finally:
            with contextlib.suppress(mpd.ConnectionError, OSError):
                client.close()
            client.disconnect()

    def _song_count(self) -> int | None:
        """Songs in the database once no update runs; None while unreachable or updating."""
        try:
            with self.client(timeout=2.0) as client:
                if "updating_db" in client.status():
                    return None
                return int(client.stats().get("songs", 0))
        except (mpd.MPDError, OSError, ValueError):
            return None

    def _start(self, *, timeout: float) -> None:
        self._proc = proc = ManagedProcess(
            "mpd",
            ["mpd", "--no-daemon", "--stderr", str(self.config_file)],
            log_file=self.log_file,
        )
        if wait_until(self._song_count, timeout=timeout, alive=proc.alive) is None:
            self._fail(proc, "did not answer")
        if self._song_count() != len(self.tracks):
            try:
                with self.client() as client:
                    client.update()
            except (mpd.MPDError, OSError) as exc:
                self._fail(proc, f"refused the database update: {exc!r}")
            expected = len(self.tracks)
            got = wait_until(
                lambda: True if self._song_count() == expected else None,
                timeout=timeout,
                alive=proc.alive,
            )
            if got is None:
                self._fail(proc, f"did not index the {expected} generated tracks")

    def _fail(self, proc: ManagedProcess, why: str) -> None:
        log = tail(self.log_file)
        proc.stop()
        raise ServiceStartError("mpd", why, log_tail=log)

    def close(self) -> None:
        """Stop playback, then the process. Idempotent (files stay in ``workdir``).

        MPD takes seconds to exit on SIGTERM while it plays to the null output, and
        at once when stopped first; `stop` alone keeps the play state for `restart`.
        """
        if self.running:
            with contextlib.suppress(mpd.MPDError, OSError), self.client(timeout=1.0) as client:
                client.stop()
        self.stop()


def start_mpd(
    workdir: Path | str,
    *,
    music_dir: Path | str | None = None,
    tracks: tuple[Track, ...] = DEFAULT_TRACKS,
    host: str = "127.0.0.1",
    timeout: float = _START_TIMEOUT,
) -> MpdProcess:
    """Start MPD with a null output and software mixer, and wait until it indexed ``tracks``.

    Args:
        workdir: Its own directory (created); config, database, state, log go there.
        music_dir: Shared music directory; ``tracks`` are generated there when missing.
            Default: ``workdir/music``.
        tracks: The tracks to generate and expect.
        host: Loopback address to bind.
        timeout: Bound for each readiness wait, in seconds.

    Returns:
        The running MPD; `MpdProcess.close` it (or use it as a context manager).

    Raises:
        ServiceStartError: mpd is missing, did not start, or did not index the tracks.
    """
    workdir = Path(workdir)
    (workdir / "playlists").mkdir(parents=True, exist_ok=True)
    music = workdir / "music" if music_dir is None else Path(music_dir)
    write_library(music, tracks)
    last_error: ServiceStartError | None = None
    for _ in range(_START_ATTEMPTS):
        port = free_port(host)
        (workdir / "mpd.conf").write_text(_CONFIG.format(music_dir=music, workdir=workdir, host=host, port=port))
        server = MpdProcess(host=host, port=port, music_dir=music, tracks=tracks, workdir=workdir)
        try:
            server._start(timeout=timeout)  # noqa: SLF001 - the factory of its own class
        except ServiceStartError as exc:
            server.close()
            if "Address already in use" not in exc.log_tail:
                raise
            last_error = exc
            continue
        except BaseException:
            server.close()
            raise
        return server
    assert last_error is not None  # noqa: S101 - the loop ran at least once
    raise last_error
