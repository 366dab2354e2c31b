"""The agent's TOML configuration file, decoded into frozen values.

Example (every key is documented in the package README)::

    device_id = "player-1"
    state_dir = "/var/lib/amora-agent"

    [keys]
    signing_key_file = "/etc/amora-agent/device-signing.pem"
    encryption_key_file = "/etc/amora-agent/device-encryption.pem"
    trusted_authz_keys = ["<base64 raw Ed25519 public key>"]

    [tls]
    ca_file = "/etc/amora-agent/ca.pem"
    cert_file = "/etc/amora-agent/device.pem"
    key_file = "/etc/amora-agent/device.key"

    [[brokers]]
    host = "mqtt.example.net"
    port = 8883

    [player]
    kind = "mpd"
"""

from __future__ import annotations

import base64
import binascii
import enum
import ssl
import stat
from pathlib import Path
from typing import Annotated, Protocol, TypeVar

import msgspec

from amora_agent._errors import ConfigError
from amora_protocol import (
    EncryptionKey,
    ProtocolError,
    SigningKey,
    VerifyKey,
    validate_device_id,
)

__all__ = [
    "AgentConfig",
    "BrokerEndpoint",
    "IoTHubConfig",
    "KeysConfig",
    "LogLevel",
    "MqttConfig",
    "PlayerConfig",
    "PlayerKind",
    "TelemetryConfig",
    "TlsConfig",
    "client_ssl_context",
    "load_config",
    "parse_verify_key",
]

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class _Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the configuration tables: unknown keys are errors (typos must not pass)."""


class LogLevel(enum.StrEnum):
    """Log levels the agent understands."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class BrokerEndpoint(_Config, frozen=True):
    """One MQTT broker the agent may use; the first in the list is preferred."""

    host: str
    port: Port = 8883

    def __str__(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"


class KeysConfig(_Config, frozen=True):
    """The device's keys and the authz keys it trusts for grants."""

    signing_key_file: str
    encryption_key_file: str | None = None
    trusted_authz_keys: tuple[str, ...] = ()
    trusted_authz_key_files: tuple[str, ...] = ()


class TlsConfig(_Config, frozen=True):
    """The device's broker credentials (its certificate's CN is its device id)."""

    ca_file: str
    cert_file: str
    key_file: str


class MqttConfig(_Config, frozen=True):
    """Connection behaviour."""

    keepalive_s: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, msgspec.Meta(ge=0)] = 600
    connect_timeout_s: Positive = 10.0
    backoff_initial_s: Positive = 0.5
    backoff_max_s: Positive = 60.0
    failback_interval_s: Positive = 60.0
    command_queue: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64
    liveness_interval_s: Positive = 1.5
    liveness_timeout_s: Positive = 2.0
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 16


class PlayerKind(enum.StrEnum):
    """Which player backend drives the agent."""

    MPD = "mpd"
    SIMULATED = "simulated"


class PlayerConfig(_Config, frozen=True):
    """The player backend."""

    kind: PlayerKind = PlayerKind.MPD
    host: str = "127.0.0.1"
    port: Port = 6600
    password: str | None = None
    tracks: Annotated[int, msgspec.Meta(ge=1)] = 20


class IoTHubConfig(_Config, frozen=True):
    """Azure IoT Hub (device twin and telemetry); off when the table is absent."""

    connection_string: str | None = None
    connection_string_file: str | None = None
    server_ca_file: str | None = None
    telemetry_interval_s: Positive = 300.0


class TelemetryConfig(_Config, frozen=True):
    """The ``[telemetry]`` table (exporters beyond it come from the environment: README).

    Attributes:
        prometheus: Serve the Prometheus text format over HTTP (``/metrics``).
        prometheus_host: Its bind address (loopback by default: a player is no server).
        prometheus_port: Its port (0: any free port, named in the log).
    """

    prometheus: bool = True
    prometheus_host: str = "127.0.0.1"
    prometheus_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464


class AgentConfig(_Config, frozen=True):
    """The whole configuration file."""

    device_id: str
    state_dir: str
    keys: KeysConfig
    tls: TlsConfig
    brokers: tuple[BrokerEndpoint, ...]
    display_name: str | None = None
    log_level: LogLevel = LogLevel.INFO
    state_fsync: bool = True
    mqtt: MqttConfig = MqttConfig()
    player: PlayerConfig = PlayerConfig()
    iothub: IoTHubConfig | None = None
    telemetry: TelemetryConfig = TelemetryConfig()

    def __post_init__(self) -> None:
        """Check what the schema alone cannot."""
        try:
            validate_device_id(self.device_id)
        except ProtocolError as exc:
            raise ConfigError(str(exc), key="device_id") from exc
        if not self.brokers:
            raise ConfigError("at least one broker is needed", key="brokers")

    def signing_key(self) -> SigningKey:
        """Load the device's Ed25519 signing key.

        Raises:
            ConfigError: The file is missing or not an Ed25519 private key.
        """
        return _load_key(self.keys.signing_key_file, SigningKey.from_pem, "keys.signing_key_file", private=True)

    def encryption_key(self) -> EncryptionKey | None:
        """Load the device's X25519 key for sealed commands, if configured.

        Raises:
            ConfigError: The file is missing or not an X25519 private key.
        """
        if self.keys.encryption_key_file is None:
            return None
        return _load_key(
            self.keys.encryption_key_file, EncryptionKey.from_pem, "keys.encryption_key_file", private=True
        )

    def trusted_keys(self) -> list[VerifyKey]:
        """The authz service's public keys this device trusts for grants.

        Raises:
            ConfigError: A key cannot be decoded.
        """
        keys = [parse_verify_key(text, key="keys.trusted_authz_keys") for text in self.keys.trusted_authz_keys]
        keys += [
            _load_key(path, VerifyKey.from_pem, "keys.trusted_authz_key_files")
            for path in self.keys.trusted_authz_key_files
        ]
        return keys


_T_co = TypeVar("_T_co", covariant=True)


class _Parser(Protocol[_T_co]):
    def __call__(self, data: bytes, /) -> _T_co: ...


def check_private_file(path: str, *, key: str | None = None) -> None:
    """Refuse a private key file that group or others may read (as ssh does).

    Raises:
        ConfigError: The file's mode lets group or others read or write it, naming the fix.
    """
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return  # reading it reports the problem, with the path
    if mode & 0o077:
        raise ConfigError(
            f"private key {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}): "
            f"run `chmod 600 {path}`",
            key=key,
        )


def _load_key(path: str, parse: _Parser[_T_co], key: str, *, private: bool = False) -> _T_co:
    if private:
        check_private_file(path, key=key)
    try:
        return parse(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=key) from exc
    except (ProtocolError, ValueError) as exc:
        raise ConfigError(f"{path} is not a usable key: {exc}", key=key) from exc


def parse_verify_key(text: str, *, key: str = "trusted key") -> VerifyKey:
    """Decode an Ed25519 public key: base64 (standard or URL-safe) of its 32 raw bytes, or PEM.

    Raises:
        ConfigError: Not a usable key.
    """
    try:
        if text.lstrip().startswith("-----BEGIN"):
            return VerifyKey.from_pem(text.encode())
        padded = text.strip() + "=" * (-len(text.strip()) % 4)
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        return VerifyKey.from_raw(raw)
    except (binascii.Error, ValueError, ProtocolError) as exc:
        raise ConfigError(f"not an Ed25519 public key: {exc}", key=key) from exc


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate the agent's TOML configuration file.

    Raises:
        ConfigError: Unreadable file, bad TOML, unknown or missing keys, bad values.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return msgspec.toml.decode(data, type=AgentConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def client_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """Build the TLS context for the device listener (TLS 1.2 or newer, client certificate).

    Raises:
        ConfigError: A certificate or key file cannot be loaded.
    """
    check_private_file(tls.key_file, key="tls.key_file")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}", key="tls") from exc
    return context
