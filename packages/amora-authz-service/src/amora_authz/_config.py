"""Configuration: a TOML file, then environment variables on top.

Environment variables override top-level scalar settings as ``AMORA_AUTHZ_<NAME>``
(``AMORA_AUTHZ_DATABASE_URL``, ``AMORA_AUTHZ_LISTEN_PORT``...); the file is named by
``--config`` or ``AMORA_AUTHZ_CONFIG``. Nested settings: ``AMORA_AUTHZ_<TABLE>__<KEY>`` and
``AMORA_AUTHZ_BROKERS__<N>__<KEY>`` (`amora_authz._config_sources`). Secrets may be given as
files (``session_secret_file``, ``signing_key_files``, a broker's ``password_file``,
``database_url_file``) so that they come from mounted secrets rather than the environment.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from amora_authz._config_sources import apply_nested_env, read_secret_files
from amora_authz._dynsec import BrokerEndpoint  # noqa: TC001 - msgspec resolves it at runtime
from amora_authz._errors import ConfigError
from amora_authz._jwt import OidcSettings  # noqa: TC001 - msgspec resolves it at runtime
from amora_authz._limits import RateLimitSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["BrokerSettings", "DevIssuerSettings", "Settings", "load_settings"]

ENV_PREFIX = "AMORA_AUTHZ_"


class DevIssuerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The built-in development OpenID provider (never for production).

    Attributes:
        enabled: serve it (off by default; the service logs a loud warning when on).
        users: the named development users it will issue tokens for.
        admins: which of them get the admin role.
        audience: the ``aud`` of its tokens.
        token_ttl_s: lifetime of its tokens.
    """

    enabled: bool = False
    users: tuple[str, ...] = ("alice", "bob", "admin")
    admins: tuple[str, ...] = ("admin",)
    audience: str = "amora-dev"
    token_ttl_s: int = 3600


class BrokerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How sessions authenticate to the brokers (the ``[broker]`` table).

    Attributes:
        credentials: ``dynsec``: each session is a dynamic-security client (a broker write
            per login); ``token``: a session's password is a short-lived ES256 token that the
            broker's ``amora_auth`` plugin verifies, and nothing is written at login.
        token_key_file: the EC P-256 private key (PEM) signing broker tokens; required in
            token mode, private like the other key files. The brokers load its public key
            (``amora-authz broker-token-key public``).
        token_issuer: the tokens' ``iss`` (the plugin's ``plugin_opt_issuer``).
        token_audience: the tokens' ``aud`` (the plugin's ``plugin_opt_audience``).
    """

    credentials: str = "dynsec"
    token_key_file: str | None = None
    token_issuer: str = "amora-authz"  # noqa: S105 - a name, not a secret
    token_audience: str = "amora-broker"  # noqa: S105 - a name, not a secret

    @property
    def tokens(self) -> bool:
        """Whether sessions get broker tokens (token mode)."""
        return self.credentials == "token"

    def token_key_path(self) -> Path | None:
        """The token key file in token mode (None in dynsec mode).

        Raises:
            ConfigError: token mode without a key file, or with an empty issuer or audience.
        """
        self.check()
        return Path(self.token_key_file) if self.tokens and self.token_key_file else None

    def check(self) -> None:
        """Refuse an unknown mode, and token mode without a key.

        Raises:
            ConfigError: an unknown mode, or token mode without a key (naming how to make one).
        """
        if self.credentials not in {"dynsec", "token"}:
            raise ConfigError(f'[broker] credentials must be "dynsec" or "token", not {self.credentials!r}')
        if self.tokens and not self.token_key_file:
            raise ConfigError(
                '[broker] credentials = "token" needs token_key_file: make a key with '
                "`amora-authz broker-token-key generate --out FILE` and set [broker] token_key_file = FILE"
            )
        if self.tokens and not (self.token_issuer and self.token_audience):
            raise ConfigError("[broker] token_issuer and token_audience must not be empty in token mode")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the service needs to run.

    Attributes:
        database_url: ``sqlite://PATH`` or a ``postgresql://`` DSN.
        listen_host: HTTP bind address.
        listen_port: HTTP port.
        ops_listen_host: bind address of the separate operations listener
            (``/healthz``, ``/readyz``, ``/metrics``, ``/schema``), e.g. a pod-internal
            address; only used when ``ops_listen_port`` is set.
        ops_listen_port: when set, the operations endpoints are served only there
            (the public listener keeps ``/healthz`` alone); None serves everything on
            the public listener.
        public_url: the URL clients reach the service at (the dev issuer's ``iss``).
        state_dir: where generated development secrets are kept (signing key,
            session secret, dev issuer key) when none is configured.
        oidc: the production issuer (None when only the dev issuer is used).
        dev_issuer: the development issuer.
        signing_key_files: PEM Ed25519 grant-signing keys; the first signs, all are
            published (rotation). Generated into ``state_dir`` when empty.
        session_secret_file: HMAC secret deriving session broker passwords.
        session_ttl_s: session (and grant) lifetime; capped by the token's ``exp``
            when ``cap_session_to_token`` is set.
        cap_session_to_token: never let a session outlive the JWT that created it.
        max_sessions_per_user: live sessions per user; one more ends the oldest.
        brokers: the brokers to reconcile (primary first).
        device_ca_cert: the device CA certificate (PEM), for CSRs and the CRL.
        device_ca_key: its private key (PEM).
        crl_file: where to write the device CRL.
        crl_reload_command: argv run after the CRL is rewritten (e.g. send SIGHUP).
        device_cert_days: lifetime of device certificates.
        reconcile_interval_s: period of the periodic pass (jittered 0.5x-1.5x): expiry
            sweep and a cheap check of every broker (counts compared with the database).
        full_reconcile_interval_s: a full reconcile pass runs on each broker about this
            often (jittered 0.5x-1.5x) even when the cheap check finds nothing; also at
            start, after a failure, after the admin connection to a broker was re-made,
            and when the counts differ.
        broker_retry_interval_s: how often changes a broker missed are retried (also
            the ``Retry-After`` of a ``change_pending`` answer).
        broker: how sessions authenticate to the brokers (dynsec clients or broker tokens).
        rate_limits: per-user and global limits on sessions and the admin API.
        expiry_check_interval_s: period of the session expiry sweep.
        log_level: ``debug``, ``info``, ``warning``, ``error``.
        log_json: JSON logs (off gives console logs for development).
        access_log: one ``http.request`` line per request (method, path, status, time).
        broker_stats: read each broker's ``$SYS`` statistics and export them as metrics
            (``amora_broker_*``; the admin account must be allowed to subscribe to ``$SYS/#``).
    """

    database_url: str = "sqlite://authz.db"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    ops_listen_host: str = "127.0.0.1"
    ops_listen_port: int | None = None
    public_url: str | None = None
    state_dir: str = "authz-state"
    oidc: OidcSettings | None = None
    dev_issuer: DevIssuerSettings = DevIssuerSettings()
    signing_key_files: tuple[str, ...] = ()
    session_secret_file: str | None = None
    session_ttl_s: int = 3600
    cap_session_to_token: bool = False
    max_sessions_per_user: int = 20
    brokers: tuple[BrokerEndpoint, ...] = ()
    device_ca_cert: str | None = None
    device_ca_key: str | None = None
    crl_file: str | None = None
    crl_reload_command: tuple[str, ...] = ()
    device_cert_days: int = 365
    reconcile_interval_s: float = 60.0
    full_reconcile_interval_s: float = 3600.0
    broker_retry_interval_s: float = 1.0
    broker: BrokerSettings = BrokerSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    expiry_check_interval_s: float = 5.0
    log_level: str = "info"
    log_json: bool = True
    access_log: bool = True
    broker_stats: bool = True

    @property
    def base_url(self) -> str:
        """The service's own URL (public_url, or derived from the listen address)."""
        return (self.public_url or f"http://{self.listen_host}:{self.listen_port}").rstrip("/")


_SCALARS = {
    name: info
    for name, info in Settings.__annotations__.items()
    if info in ("str", "int", "float", "bool", "str | None", "int | None")
}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, kind in _SCALARS.items():
        value = environ.get(ENV_PREFIX + name.upper())
        if value is None:
            continue
        if kind == "bool":
            overrides[name] = value.strip().lower() in {"1", "true", "yes", "on"}
        elif kind in {"int", "int | None"}:
            overrides[name] = int(value)
        elif kind == "float":
            overrides[name] = float(value)
        else:
            overrides[name] = value
    if environ.get(ENV_PREFIX + "DEV_ISSUER", "").strip().lower() in {"1", "true", "yes", "on"}:
        overrides["dev_issuer"] = {"enabled": True}
    return overrides


def load_settings(path: Path | None = None, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Load the settings from ``path`` (or ``$AMORA_AUTHZ_CONFIG``) and the environment.

    Raises:
        ConfigError: the file cannot be read or a value is invalid.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = Path(env[ENV_PREFIX + "CONFIG"])
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc}") from exc
    try:
        overrides = _env_overrides(env)
    except ValueError as exc:
        raise ConfigError(f"invalid environment setting: {exc}") from exc
    dev = overrides.pop("dev_issuer", None)
    data.update(overrides)
    if dev is not None:
        data["dev_issuer"] = {**data.get("dev_issuer", {}), **dev}
    apply_nested_env(data, env, ENV_PREFIX)
    read_secret_files(data)
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    settings.broker.check()
    return settings
