"""``amora-agent keygen`` and ``example-config`` (the enrolment itself: tests-integration/test_enrolment.py)."""

from __future__ import annotations

import json
import os
import stat
from typing import TYPE_CHECKING

import pytest

from amora_agent._cli import main
from amora_agent._config import load_config
from amora_agent._enrol import keygen

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(name="no_umask")
def _no_umask() -> Iterator[None]:
    """Modes must come from the code, not from a umask that happens to be strict."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["example-config"]) == 0
    example = capsys.readouterr().out
    keys = tmp_path / "etc" / "keys"
    text = example.replace("/etc/amora-agent/", f"{keys}/").replace('"player-1"', '"player-7"')
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_the_example_configuration_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(_config(tmp_path, capsys))
    assert config.device_id == "player-7"
    assert config.brokers[0].port == 8883


@pytest.mark.usefixtures("no_umask")
def test_keygen_writes_private_files_in_a_private_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, capsys)
    assert main(["keygen", "--config", str(path)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["device_id"] == "player-7"
    assert "BEGIN CERTIFICATE REQUEST" in body["csr"]
    keys = tmp_path / "etc" / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in ("device-signing.pem", "device-encryption.pem", "device.key", "device.key.csr"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600, name
    # The agent accepts what keygen made.
    config = load_config(path)
    assert config.signing_key().public_key.raw.hex()
    assert config.encryption_key() is not None


def test_keygen_keeps_existing_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(_config(tmp_path, capsys))
    first, second = keygen(config), keygen(config)
    assert (first.signing_key, first.encryption_key) == (second.signing_key, second.encryption_key)


def test_keygen_refuses_a_file_that_is_not_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, capsys)
    keys = tmp_path / "etc" / "keys"
    keys.mkdir(parents=True)
    (keys / "device-signing.pem").write_text("not a key")
    assert main(["keygen", "--config", str(path)]) == 2
    assert "not a usable key" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("amora-agent 0.")
