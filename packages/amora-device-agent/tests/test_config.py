import base64
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from amora_agent import ConfigError, client_ssl_context, load_config
from amora_agent._config import LogLevel, PlayerKind, parse_verify_key
from amora_protocol import EncryptionKey, SigningKey


def write_config(tmp_path: Path, extra: str = "", *, device_id: str = "player-1") -> Path:
    signing = tmp_path / "signing.pem"
    signing.write_bytes(SigningKey.generate().to_pem())
    signing.chmod(0o600)
    sealing = tmp_path / "sealing.pem"
    sealing.write_bytes(EncryptionKey.generate().to_pem())
    sealing.chmod(0o600)
    authz = SigningKey.generate().public_key
    authz_file = tmp_path / "authz.pem"
    authz_file.write_bytes(SigningKey.generate().public_key.to_pem())
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
device_id = "{device_id}"
state_dir = "{tmp_path / "state"}"
log_level = "debug"

[keys]
signing_key_file = "{signing}"
encryption_key_file = "{sealing}"
trusted_authz_keys = ["{base64.b64encode(authz.raw).decode()}"]
trusted_authz_key_files = ["{authz_file}"]

[tls]
ca_file = "/nonexistent/ca.pem"
cert_file = "/nonexistent/device.pem"
key_file = "/nonexistent/device.key"

[[brokers]]
host = "primary.example"

[[brokers]]
host = "standby.example"
port = 18883
{extra}
"""
    )
    return path


def test_a_full_config_loads(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "[player]\nkind = 'simulated'\n"))
    assert config.device_id == "player-1"
    assert config.log_level is LogLevel.DEBUG
    assert [str(b) for b in config.brokers] == ["primary.example:8883", "standby.example:18883"]
    assert config.player.kind is PlayerKind.SIMULATED
    assert config.mqtt.session_expiry_s == 600
    assert len(config.trusted_keys()) == 2
    assert config.signing_key().kid
    assert config.encryption_key() is not None


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sesion_expiry_s"):
        load_config(write_config(tmp_path, "[mqtt]\nsesion_expiry_s = 5\n"))


def test_bad_device_id_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device_id"):
        load_config(write_config(tmp_path, device_id="bad/id"))


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("device_id = ")
    with pytest.raises(ConfigError, match="TOML"):
        load_config(bad)


def test_missing_key_file_names_the_key(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    (tmp_path / "signing.pem").unlink()
    with pytest.raises(ConfigError) as info:
        config.signing_key()
    assert info.value.key == "keys.signing_key_file"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
@pytest.mark.parametrize("which", ["signing", "sealing", "tls"])
def test_a_private_key_others_may_read_is_refused_like_ssh_does(tmp_path: Path, dev_pki, mode: int, which: str) -> None:
    config = load_config(write_config(tmp_path))
    cert = dev_pki.issue_client_cert("player-1")
    path = {"signing": tmp_path / "signing.pem", "sealing": tmp_path / "sealing.pem", "tls": cert.key_file}[which]
    path.chmod(mode)
    tls = msgspec.structs.replace(
        config.tls, ca_file=str(dev_pki.ca_file), cert_file=str(cert.cert_file), key_file=str(cert.key_file)
    )

    def load() -> object:
        if which == "signing":
            return config.signing_key()
        if which == "sealing":
            return config.encryption_key()
        return client_ssl_context(tls)

    with pytest.raises(ConfigError) as info:
        load()
    assert (
        info.value.key
        == {"signing": "keys.signing_key_file", "sealing": "keys.encryption_key_file", "tls": "tls.key_file"}[which]
    )
    assert f"(mode {mode:04o}): run `chmod 600 {path}`" in str(info.value)
    path.chmod(0o600)  # the fix it names works
    assert load() is not None


def test_the_agent_refuses_to_start_with_a_readable_key(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "signing.pem").chmod(0o644)
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed module
        [sys.executable, "-m", "amora_agent", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(f"run `chmod 600 {tmp_path / 'signing.pem'}`")


def test_verify_keys_parse_in_every_spelling() -> None:
    key = SigningKey.generate().public_key
    raw = key.raw
    spellings = [
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        key.to_pem().decode(),
    ]
    assert {parse_verify_key(s).kid for s in spellings} == {key.kid}
    with pytest.raises(ConfigError):
        parse_verify_key("not-a-key")


def test_cli_exit_statuses(tmp_path: Path, dev_pki) -> None:
    from amora_agent._cli import main  # noqa: PLC0415

    assert main(["check-config", "--config", str(write_config(tmp_path))]) == 0
    assert main(["check-config", "--config", str(tmp_path / "missing.toml")]) == 2
    # A state directory that cannot be created may heal (disk, mount): exit 1, systemd restarts.
    cert = dev_pki.issue_client_cert("player-1")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the state directory should be")
    config = (
        write_config(tmp_path, "[player]\nkind = 'simulated'\n")
        .read_text()
        .replace(f'state_dir = "{tmp_path / "state"}"', f'state_dir = "{blocked / "state"}"')
        .replace("/nonexistent/ca.pem", str(dev_pki.ca_file))
        .replace("/nonexistent/device.pem", str(cert.cert_file))
        .replace("/nonexistent/device.key", str(cert.key_file))
    )
    path = tmp_path / "blocked.toml"
    path.write_text(config)
    result = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "amora_agent", "run", "--config", str(path)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert b"state" in result.stderr
