"""Nested settings from the environment and secrets from files (as container platforms pass them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from amora_authz import ConfigError, load_settings

if TYPE_CHECKING:
    from pathlib import Path

BROKER = """
[[brokers]]
name = "primary"
host = "broker.example.test"
port = 8884
username = "svc.authz"
{password}
ca_file = "/etc/amora/ca.pem"
client_endpoints = ["mqtts://broker.example.test:8884"]
"""


def _config(tmp_path: Path, password: str = 'password = "in-toml"') -> Path:  # noqa: S107 - a test value
    path = tmp_path / "authz.toml"
    path.write_text(f'database_url = "sqlite://{tmp_path / "a.db"}"\n' + BROKER.format(password=password))
    return path


def test_nested_tables_and_brokers_from_the_environment(tmp_path: Path) -> None:
    env = {
        "AMORA_AUTHZ_DEV_ISSUER__ENABLED": "true",
        "AMORA_AUTHZ_DEV_ISSUER__USERS": '["ann", "admin"]',
        "AMORA_AUTHZ_OIDC__ISSUER": "https://login.example.test/v2.0",
        "AMORA_AUTHZ_OIDC__AUDIENCE": "amora-api",
        "AMORA_AUTHZ_BROKERS__0__PASSWORD": "from-env",
        "AMORA_AUTHZ_BROKERS__0__PORT": "9884",
    }
    settings = load_settings(_config(tmp_path), environ=env)
    assert settings.dev_issuer.enabled
    assert settings.dev_issuer.users == ("ann", "admin")
    assert settings.oidc is not None
    assert settings.oidc.issuer == "https://login.example.test/v2.0"
    assert settings.brokers[0].password == "from-env"
    assert settings.brokers[0].port == 9884


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "broker-password").write_text("from-file\n")
    (tmp_path / "db-url").write_text(f"sqlite://{tmp_path / 'b.db'}\n")
    path = _config(tmp_path, password=f'password_file = "{tmp_path / "broker-password"}"')
    settings = load_settings(path, environ={"AMORA_AUTHZ_DATABASE_URL_FILE": str(tmp_path / "db-url")})
    assert settings.brokers[0].password == "from-file"
    assert settings.database_url == f"sqlite://{tmp_path / 'b.db'}"  # the variable wins over the file's value


def test_a_top_level_secret_file(tmp_path: Path) -> None:
    (tmp_path / "db-url").write_text(f"sqlite://{tmp_path / 'b.db'}\n")
    path = tmp_path / "authz.toml"
    path.write_text(f'database_url_file = "{tmp_path / "db-url"}"\n')
    assert load_settings(path, environ={}).database_url == f"sqlite://{tmp_path / 'b.db'}"


@pytest.mark.parametrize(
    ("password", "env", "message"),
    [
        ('password = "x"\npassword_file = "/run/secrets/p"', {}, "both given"),
        ('password_file = "/nonexistent/secret"', {}, "cannot read /nonexistent/secret"),
        ('password = "x"', {"AMORA_AUTHZ_BROKERS__2__PASSWORD": "y"}, "index 2 skips some"),
        ('password = "x"', {"AMORA_AUTHZ_BROKERS__PASSWORD": "y"}, "BROKERS__<index>__<KEY>"),
    ],
)
def test_bad_sources_are_one_clear_error(tmp_path: Path, password: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_config(tmp_path, password=password), environ=env)
