"""``amora-authz`` for operators: one-line errors, exit statuses, ``serve --host/--port``."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from amora_authz._cli import EXIT_CONFIG, EXIT_FAILURE, main

SCRIPT = str(Path(sys.executable).with_name("amora-authz"))


def _config(folder: Path, *, dev_issuer: bool = True) -> Path:
    path = folder / "authz.toml"
    path.write_text(
        f'database_url = "sqlite://{folder / "a.db"}"\nstate_dir = "{folder / "state"}"\n'
        + ("[dev_issuer]\nenabled = true\n" if dev_issuer else "")
    )
    return path


def test_serve_without_an_issuer_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(  # noqa: S603 - our own console script
        [SCRIPT, "--config", str(_config(tmp_path, dev_issuer=False)), "serve"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("amora-authz: no token issuer configured: add an [oidc] table")


def test_a_missing_configuration_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "none.toml"), "migrate"]) == EXIT_CONFIG
    assert capsys.readouterr().err.startswith(f"amora-authz: cannot read configuration {tmp_path / 'none.toml'}")


def test_serve_on_a_taken_port_is_one_line_naming_it_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(  # noqa: S603 - our own console script
            [SCRIPT, "--config", str(_config(tmp_path)), "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    assert result.returncode == EXIT_FAILURE
    assert result.stderr.splitlines()[-1].startswith(f"amora-authz: the HTTP server did not start on 127.0.0.1:{port}")


def test_serve_listens_where_host_and_port_say_and_logs_each_request(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(  # noqa: S603 - our own console script
        [SCRIPT, "--config", str(_config(tmp_path)), "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        answered = None
        while answered is None and time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                answered = httpx.get(f"http://127.0.0.1:{port}/healthz?secret=query-secret", timeout=2).json()
            time.sleep(0.05)  # bounded poll of a process we started
        assert answered == {"status": "ok"}
        token = httpx.post(f"http://127.0.0.1:{port}/dev-issuer/token", json={"username": "alice"}, timeout=5)
        assert token.status_code == 200
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=15)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("event") == "http.request"]
    assert {"method": "GET", "path": "/healthz", "status": 200, "client": "127.0.0.1"}.items() <= access[-2].items()
    assert {"method": "POST", "path": "/dev-issuer/token", "status": 200}.items() <= access[-1].items()
    assert isinstance(access[-1]["duration_ms"], float)
    assert "query-secret" not in stderr  # never the query string
    assert token.json()["access_token"] not in stderr  # nor bodies


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("amora-authz 0.")
