"""Private key files: refused when others may read them, generated 0600 in a 0700 folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from amora_authz import ConfigError
from amora_authz._config import Settings
from amora_authz._keyfiles import write_private
from amora_authz._runtime import _session_secret, load_signing_keys
from amora_protocol import SigningKey


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_keys_are_private_from_the_first_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []
    real_open = os.open

    def spy(path: object, flags: int, mode: int = 0o777, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            opened.append(mode)
        return real_open(path, flags, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    settings = Settings(state_dir=str(tmp_path / "state"))
    key = load_signing_keys(settings)[0]
    secret = _session_secret(settings)
    monkeypatch.undo()
    # Created with mode 0600 (never written first and chmod-ed after), in a folder made 0700.
    assert opened == [0o600, 0o600]
    assert _mode(tmp_path / "state" / "grant-signing-key.pem") == 0o600
    assert _mode(tmp_path / "state" / "session-secret") == 0o600
    assert _mode(tmp_path / "state") == 0o700
    # Loading again reads the same ones.
    assert load_signing_keys(settings)[0].kid == key.kid
    assert _session_secret(settings) == secret


def test_a_stale_temporary_file_cannot_widen_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "k.pem"
    stale = tmp_path / f".k.pem.{os.getpid()}.tmp"
    stale.write_bytes(b"old")
    stale.chmod(0o644)
    write_private(target, b"secret")
    assert (target.read_bytes(), _mode(target)) == (b"secret", 0o600)


@pytest.mark.parametrize("mode", [0o660, 0o604, 0o644])
def test_keys_others_may_read_are_refused_naming_the_fix(tmp_path: Path, mode: int) -> None:
    key_file = tmp_path / "grant.pem"
    key_file.write_bytes(SigningKey.generate().to_pem())
    key_file.chmod(mode)
    with pytest.raises(ConfigError, match=rf"\(mode {mode:04o}\): run `chmod 600 {key_file}`"):
        load_signing_keys(Settings(state_dir=str(tmp_path), signing_key_files=(str(key_file),)))
    secret = tmp_path / "session-secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(mode)
    with pytest.raises(ConfigError, match=rf"session secret {secret} .* run `chmod 600 {secret}`"):
        _session_secret(Settings(state_dir=str(tmp_path), session_secret_file=str(secret)))
    key_file.chmod(0o600)
    assert load_signing_keys(Settings(state_dir=str(tmp_path), signing_key_files=(str(key_file),)))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the file to another owner")
def test_group_read_is_allowed_only_when_root_owns_the_file(tmp_path: Path) -> None:
    # Kubernetes secret volumes: owned by root, group = the pod's fsGroup, mode 0440/0640.
    key_file = tmp_path / "grant.pem"
    key_file.write_bytes(SigningKey.generate().to_pem())
    key_file.chmod(0o440)
    settings = Settings(state_dir=str(tmp_path), signing_key_files=(str(key_file),))
    assert load_signing_keys(settings)
    # The same mode on a file someone else owns: that owner could widen it; refused.
    os.chown(key_file, 65534, 65534)
    with pytest.raises(ConfigError, match=r"\(mode 0440\): run `chmod 600"):
        load_signing_keys(settings)


def test_the_service_refuses_to_start_with_a_readable_key(tmp_path: Path) -> None:
    key_file = tmp_path / "grant.pem"
    key_file.write_bytes(SigningKey.generate().to_pem())
    key_file.chmod(0o644)
    config = tmp_path / "authz.toml"
    config.write_text(
        f'database_url = "sqlite://{tmp_path / "authz.db"}"\n'
        f'state_dir = "{tmp_path}"\n'
        f'signing_key_files = ["{key_file}"]\n'
        "[dev_issuer]\nenabled = true\n"
    )
    script = Path(sys.executable).with_name("amora-authz")  # this environment's console script
    done = subprocess.run(  # noqa: S603 - a fixed argv
        [str(script), "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2  # configuration: restarting will not help
    last = done.stderr.strip().splitlines()[-1]  # one line
    assert last.startswith("amora-authz: ")
    assert (
        f"grant-signing key {key_file} is accessible by group or others (mode 0644): run `chmod 600 {key_file}`" in last
    )
