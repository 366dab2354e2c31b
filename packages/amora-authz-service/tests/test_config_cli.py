"""Configuration loading (file + environment) and the CLI's database commands."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import structlog

from amora_authz import ConfigError, load_settings
from amora_authz._cli import main

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures logging for the process; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def write_config(folder: Path) -> Path:
    path = folder / "authz.toml"
    path.write_text(
        f"""
database_url = "sqlite://{folder / "cli.db"}"
state_dir = "{folder / "state"}"
listen_port = 9000
session_ttl_s = 600

[oidc]
issuer = "https://login.example.test/v2.0"
audience = "amora-api"
algorithms = ["RS256"]

[dev_issuer]
enabled = true
users = ["alice", "admin"]

[[brokers]]
name = "primary"
host = "broker.example.test"
port = 8883
username = "authz"
password = "secret"
client_endpoints = ["mqtts://broker.example.test:8883"]
""",
        "utf-8",
    )
    return path


def test_file_then_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    settings = load_settings(path, environ={"AMORA_AUTHZ_LISTEN_PORT": "9100"})
    assert settings.listen_port == 9100
    assert settings.session_ttl_s == 600
    assert settings.oidc is not None
    assert settings.oidc.algorithms == ("RS256",)
    assert settings.dev_issuer.users == ("alice", "admin")
    assert settings.brokers[0].port == 8883
    assert settings.base_url == "http://127.0.0.1:9100"
    via_env = load_settings(environ={"AMORA_AUTHZ_CONFIG": str(path), "AMORA_AUTHZ_DEV_ISSUER": "false"})
    assert via_env.listen_port == 9000
    assert load_settings(environ={"AMORA_AUTHZ_DEV_ISSUER": "1"}).dev_issuer.enabled


def test_the_example_deployment_config_loads() -> None:
    example = Path(__file__).resolve().parents[3] / "infra" / "authz" / "authz.example.toml"
    settings = load_settings(example, environ={})
    assert [b.name for b in settings.brokers] == ["primary", "standby"]
    assert not settings.dev_issuer.enabled
    # The service and apps log in with a password: the deployed brokers' app listener, not
    # the device listener (mTLS only); web apps need a wss endpoint on every broker.
    deployed = (example.parents[1] / "k8s" / "base" / "broker-config.yaml").read_text()
    found = re.search(r'AMORA_BROKER_APP_PORT: "(\d+)"', deployed)
    assert found, "infra/k8s/base/broker-config.yaml no longer names the app port"
    app_port = int(found[1])
    for broker in settings.brokers:
        schemes = {urlsplit(e).scheme: urlsplit(e).port for e in broker.client_endpoints}
        assert (broker.port, schemes.get("mqtts")) == (app_port, app_port), broker.name
        assert "wss" in schemes, broker.name


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ("listen_port = 'many'", {}),
        ("no_such_setting = 1", {}),
        ("[[[", {}),
        ("", {"AMORA_AUTHZ_LISTEN_PORT": "eighty"}),
    ],
)
def test_invalid_configuration_is_a_config_error(tmp_path: Path, text: str, env: dict[str, str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(ConfigError):
        load_settings(path, environ=env)


def test_cli_database_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path)
    assert main(["--config", str(path), "migrate"]) == 0
    assert "schema version 4" in capsys.readouterr().out
    # Linking needs a registered device (done through the API): an unknown one is an input error.
    assert main(["--config", str(path), "link", "alice", "player-1"]) == 2
    assert "player-1" in capsys.readouterr().err
    assert main(["--config", str(path), "devices", "alice"]) == 0
    assert capsys.readouterr().out.strip() == ""
    assert main(["--config", str(path), "keys"]) == 0
    kid = capsys.readouterr().out.strip()
    assert kid
    assert main(["--config", str(path), "keys"]) == 0
    assert capsys.readouterr().out.strip() == kid  # generated once, then reused
    assert main(["--config", str(path), "dev-token", "alice"]) == 0
    assert capsys.readouterr().out.count(".") == 2


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "amora-authz: serve, migrate" in out
    assert "``" not in out  # the module docstring's markup is not shown to operators
