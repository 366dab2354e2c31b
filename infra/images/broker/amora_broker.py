#!/usr/bin/python3
"""Entrypoint of the amora-broker image: render mosquitto's configuration, initialise dynsec, run.

``amora-broker run`` (the image's default command):

1. renders ``mosquitto.conf.template`` (and ``bridge.conf.template`` on a standby) from the
   environment and the mounted TLS files into ``AMORA_BROKER_RUN_DIR``; when broker-token
   public keys are mounted (``AMORA_BROKER_TOKEN_PUBLIC_KEYS``) it puts the ``amora_auth``
   plugin (``amora-auth.conf.template``) before dynamic security: token mode;
2. on the first start (no ``dynamic-security.json`` in the state volume yet) writes the initial
   dynamic-security state: the admin account whose password is read from a mounted secret,
   deny-by-default ACL access, and on a primary the standby's bridge account;
3. proves the state volume is writable by this user (mosquitto answers "success" to dynsec
   commands it cannot save), then starts mosquitto and stays as its parent: it forwards
   SIGTERM, SIGINT and SIGHUP (SIGTERM saves persistence, SIGHUP reloads the CRL), and every
   ``AMORA_BROKER_CRL_WATCH_S`` seconds (10) it looks at the CRL file and sends mosquitto a
   SIGHUP when the file changed. The authz service writes the CRL to a volume the brokers
   mount; this is how a revocation reaches a broker in another container or on another node
   (mosquitto 2.0 only reads its CRL at start and on SIGHUP). ``AMORA_BROKER_CRL_WATCH_S=0``
   replaces the entrypoint with mosquitto instead (exec: mosquitto is PID 1).

``amora-broker healthcheck`` exits 0 when the app listener answers an MQTT CONNECT with a
CONNACK over TLS (no credentials needed: a refusal is an answer). ``amora-broker render``
prints the configuration it would run with.

Standard library only: the image carries Debian's python3 and mosquitto, nothing else.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import ssl
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["ConfigError", "Settings", "initial_dynsec", "main", "prepare", "render", "settings_from_env", "supervise"]

ENV_PREFIX = "AMORA_BROKER_"
DYNSEC_FILE = "dynamic-security.json"
REVOCATIONS_FILE = "amora-revocations.json"
_CONTROL = "$CONTROL/dynamic-security/#"
# The broker-token plugin's control topic (revocations) and its answers.
_AUTH_CONTROL = "$CONTROL/amora-auth/#"
_AUTH_RESPONSE = "$CONTROL/amora-auth/v1/response"
# mosquitto_ctrl's own choice for dynsec password hashes (PBKDF2-SHA512).
_PBKDF2_ITERATIONS = 101


class ConfigError(Exception):
    """The environment or a mounted file does not describe a broker that can start."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the templates and the first start need (names as in the templates)."""

    template_dir: Path
    run_dir: Path
    state_dir: Path
    bind_address: str
    ws_bind: str
    device_port: int
    app_port: int
    ws_port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path
    dynsec_plugin: Path
    admin_username: str
    admin_password_file: Path
    bridge_username: str | None
    bridge_password_file: Path | None
    bridge_address: str | None
    bridge_cafile: Path
    bridge_name: str
    extra_config_dir: Path
    crl_watch_s: float
    token_public_keys: Path | None = None
    token_plugin: Path = Path("/usr/lib/amora-broker/amora_auth.so")
    token_issuer: str = "amora-authz"  # noqa: S105 - a name, not a secret
    token_audience: str = "amora-broker"  # noqa: S105 - a name, not a secret

    @property
    def standby(self) -> bool:
        """A standby bridges to the primary (it has a bridge address)."""
        return self.bridge_address is not None


_DEFAULTS: dict[str, str] = {
    "TEMPLATE_DIR": "/usr/share/amora-broker",
    "RUN_DIR": "/run/amora-broker",
    "STATE_DIR": "/var/lib/amora-broker",
    "BIND_ADDRESS": "0.0.0.0",  # noqa: S104 - a container listens on its own interfaces
    "WS_BIND": "eth0",
    "DEVICE_PORT": "8883",
    "APP_PORT": "8884",
    "WS_PORT": "8443",
    "CA_FILE": "/run/secrets/amora/device-ca.pem",
    "CERT_FILE": "/run/secrets/amora/broker.pem",
    "KEY_FILE": "/run/secrets/amora/broker.key",
    "CRL_FILE": "/run/amora/crl/devices.crl.pem",
    "DYNSEC_PLUGIN": "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    # Service accounts are `svc.*` (amora_protocol.service_account_name): never a device or user id.
    "ADMIN_USERNAME": "svc.amora-authz",
    "ADMIN_PASSWORD_FILE": "/run/secrets/amora/broker-admin-password",
    "BRIDGE_NAME": "standby-to-primary",
    "EXTRA_CONFIG_DIR": "/etc/amora-broker/conf.d",
    "CRL_WATCH_S": "10",
    "TOKEN_PUBLIC_KEYS": "/run/secrets/amora/broker-token-keys.pem",
    "TOKEN_PLUGIN": "/usr/lib/amora-broker/amora_auth.so",
    "TOKEN_ISSUER": "amora-authz",
    "TOKEN_AUDIENCE": "amora-broker",
}


def _get(env: Mapping[str, str], name: str) -> str:
    value = env.get(ENV_PREFIX + name, "").strip()
    return value or _DEFAULTS.get(name, "")


def _port(env: Mapping[str, str], name: str) -> int:
    raw = _get(env, name)
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not a TCP port: set it to a number from 1 to 65535")
    return port


def _seconds(env: Mapping[str, str], name: str) -> float:
    raw = _get(env, name)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r}: give seconds from 0 (off) to 3600")
    return value


def _optional(env: Mapping[str, str], name: str) -> str | None:
    return env.get(ENV_PREFIX + name, "").strip() or None


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Read the settings from ``AMORA_BROKER_*`` variables (defaults: the image's layout).

    Raises:
        ConfigError: A value is malformed, or the bridge settings are incomplete.
    """
    bridge_username = _optional(env, "BRIDGE_USERNAME")
    bridge_password_file = _optional(env, "BRIDGE_PASSWORD_FILE")
    bridge_address = _optional(env, "BRIDGE_ADDRESS")
    if (bridge_username is None) != (bridge_password_file is None):
        raise ConfigError(
            f"set both {ENV_PREFIX}BRIDGE_USERNAME and {ENV_PREFIX}BRIDGE_PASSWORD_FILE "
            "(the bridge account), or neither"
        )
    if bridge_address is not None and bridge_username is None:
        raise ConfigError(
            f"{ENV_PREFIX}BRIDGE_ADDRESS makes this broker a standby: it also needs "
            f"{ENV_PREFIX}BRIDGE_USERNAME and {ENV_PREFIX}BRIDGE_PASSWORD_FILE (the account the primary created)"
        )
    if bridge_address is not None and ":" not in bridge_address:
        raise ConfigError(
            f"{ENV_PREFIX}BRIDGE_ADDRESS={bridge_address!r}: give host:port of the primary's app listener"
        )
    ca_file = Path(_get(env, "CA_FILE"))
    # Token mode when the keys are mounted (at the default path, or where the variable says:
    # a named file that is missing is an error, not dynsec mode).
    token_keys = Path(_get(env, "TOKEN_PUBLIC_KEYS"))
    if _optional(env, "TOKEN_PUBLIC_KEYS") is not None and not token_keys.is_file():
        raise ConfigError(
            f"{ENV_PREFIX}TOKEN_PUBLIC_KEYS={token_keys}: no such file; mount the broker-token public keys "
            "(`amora-authz broker-token-key public`) there, or unset it for dynamic-security sessions only"
        )
    return Settings(
        template_dir=Path(_get(env, "TEMPLATE_DIR")),
        run_dir=Path(_get(env, "RUN_DIR")),
        state_dir=Path(_get(env, "STATE_DIR")),
        bind_address=_get(env, "BIND_ADDRESS"),
        ws_bind=_get(env, "WS_BIND"),
        device_port=_port(env, "DEVICE_PORT"),
        app_port=_port(env, "APP_PORT"),
        ws_port=_port(env, "WS_PORT"),
        ca_file=ca_file,
        cert_file=Path(_get(env, "CERT_FILE")),
        key_file=Path(_get(env, "KEY_FILE")),
        crl_file=Path(_get(env, "CRL_FILE")),
        dynsec_plugin=Path(_get(env, "DYNSEC_PLUGIN")),
        admin_username=_get(env, "ADMIN_USERNAME"),
        admin_password_file=Path(_get(env, "ADMIN_PASSWORD_FILE")),
        bridge_username=bridge_username,
        bridge_password_file=Path(bridge_password_file) if bridge_password_file else None,
        bridge_address=bridge_address,
        bridge_cafile=Path(_optional(env, "BRIDGE_CAFILE") or ca_file),
        bridge_name=_get(env, "BRIDGE_NAME"),
        extra_config_dir=Path(_get(env, "EXTRA_CONFIG_DIR")),
        crl_watch_s=_seconds(env, "CRL_WATCH_S"),
        token_public_keys=token_keys if token_keys.is_file() else None,
        token_plugin=Path(_get(env, "TOKEN_PLUGIN")),
        token_issuer=_get(env, "TOKEN_ISSUER"),
        token_audience=_get(env, "TOKEN_AUDIENCE"),
    )


def _read_secret(path: Path, what: str, variable: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the {what} from {path} ({exc.strerror}): mount it there or set {variable}"
        ) from exc
    if not value:
        raise ConfigError(f"the {what} in {path} is empty: put the secret in that file")
    return value


def _check_readable(settings: Settings) -> None:
    """Fail with the variable to fix before mosquitto fails with a less helpful message."""
    files = {
        "CA_FILE": settings.ca_file,
        "CERT_FILE": settings.cert_file,
        "KEY_FILE": settings.key_file,
        "CRL_FILE": settings.crl_file,
        "DYNSEC_PLUGIN": settings.dynsec_plugin,
    }
    if settings.standby:
        files["BRIDGE_CAFILE"] = settings.bridge_cafile
    if settings.token_public_keys is not None:
        files["TOKEN_PUBLIC_KEYS"] = settings.token_public_keys
        files["TOKEN_PLUGIN"] = settings.token_plugin
    for name, path in files.items():
        if not os.access(path, os.R_OK):
            raise ConfigError(
                f"{path} is missing or not readable by uid {os.getuid()}: mount it there or set {ENV_PREFIX}{name}"
            )


def _substitute(template: str, values: Mapping[str, str]) -> str:
    # Comment lines document the placeholders: they stay as written.
    return "\n".join(
        line if line.lstrip().startswith("#") else string.Template(line).substitute(values)
        for line in template.splitlines()
    )


def render(settings: Settings, *, bridge_password: str | None = None) -> str:
    """The complete mosquitto configuration for these settings.

    Raises:
        ConfigError: A template is missing, or a standby has no bridge password.
    """
    values = {
        "bind_address": settings.bind_address,
        "ws_bind": settings.ws_bind,
        "device_port": str(settings.device_port),
        "app_port": str(settings.app_port),
        "ws_port": str(settings.ws_port),
        "ca_file": str(settings.ca_file),
        "cert_file": str(settings.cert_file),
        "key_file": str(settings.key_file),
        "crl_file": str(settings.crl_file),
        "state_dir": str(settings.state_dir),
        "dynsec_plugin": str(settings.dynsec_plugin),
    }
    parts = [_substitute(_template(settings, "mosquitto.conf.template"), values)]
    if settings.token_public_keys is not None:
        # First: mosquitto asks plugins in load order, and amora_auth must decide `sess.*`
        # names before dynamic security sees them (it defers every other name).
        parts.insert(
            0,
            _substitute(
                _template(settings, "amora-auth.conf.template"),
                {
                    "amora_auth_plugin": str(settings.token_plugin),
                    "token_public_keys": str(settings.token_public_keys),
                    "token_issuer": settings.token_issuer,
                    "token_audience": settings.token_audience,
                    "token_revocations": str(settings.state_dir / REVOCATIONS_FILE),
                    "token_username_prefix": "sess.",
                },
            ),
        )
    if settings.standby:
        if bridge_password is None:
            raise ConfigError("a standby needs its bridge password to render the bridge")
        parts.append(
            _substitute(
                _template(settings, "bridge.conf.template"),
                {
                    "bridge_name": settings.bridge_name,
                    "bridge_address": str(settings.bridge_address),
                    "bridge_username": str(settings.bridge_username),
                    "bridge_password": bridge_password,
                    "bridge_cafile": str(settings.bridge_cafile),
                },
            )
        )
    if settings.extra_config_dir.is_dir() and any(settings.extra_config_dir.glob("*.conf")):
        # Operator additions (mounted); mosquitto reads them after everything above.
        parts.append(f"include_dir {settings.extra_config_dir}")
    return "\n".join(parts) + "\n"


def _template(settings: Settings, name: str) -> str:
    path = settings.template_dir / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"template {path} not readable ({exc.strerror}): set {ENV_PREFIX}TEMPLATE_DIR") from exc


def _password_entry(password: str) -> dict[str, Any]:
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS, dklen=64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": _PBKDF2_ITERATIONS,
    }


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def initial_dynsec(
    *, admin_username: str, admin_password: str, bridge_username: str | None = None, bridge_password: str | None = None
) -> dict[str, Any]:
    """The first dynamic-security state: deny by default, the admin, and optionally a bridge account.

    The admin may administer dynsec, send the broker-token plugin its revocations
    (``$CONTROL/amora-auth``; harmless without the plugin) and read ``$SYS``, nothing else:
    it is the authz service's account, which only reconciles. The bridge account (on a primary) may
    read and write ``amora/#``, with its client id fixed to its username.
    """
    clients: list[dict[str, Any]] = [
        {
            "username": admin_username,
            "textname": "amora-broker admin (from the mounted secret)",
            "roles": [{"rolename": "amora-admin"}],
            **_password_entry(admin_password),
        }
    ]
    roles: list[dict[str, Any]] = [
        {
            "rolename": "amora-admin",
            "textname": "dynsec administration, token revocations and $SYS; nothing else",
            "acls": [
                _acl("publishClientSend", _CONTROL),
                _acl("publishClientReceive", _CONTROL),
                _acl("subscribePattern", _CONTROL),
                _acl("unsubscribePattern", _CONTROL),
                _acl("publishClientSend", _AUTH_CONTROL),
                _acl("publishClientReceive", _AUTH_RESPONSE),
                _acl("subscribeLiteral", _AUTH_RESPONSE),
                _acl("unsubscribeLiteral", _AUTH_RESPONSE),
                _acl("publishClientReceive", "$SYS/#"),
                _acl("subscribePattern", "$SYS/#"),
                _acl("unsubscribePattern", "$SYS/#"),
            ],
        }
    ]
    if bridge_username is not None and bridge_password is not None:
        clients.append(
            {
                "username": bridge_username,
                "clientid": bridge_username,
                "textname": "bridge from the standby",
                "roles": [{"rolename": "amora-bridge"}],
                **_password_entry(bridge_password),
            }
        )
        roles.append(
            {
                "rolename": "amora-bridge",
                "textname": "standby bridge: amora/# both ways",
                "acls": [
                    _acl(t, "amora/#")
                    for t in ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
                ],
            }
        )
    return {
        "defaultACLAccess": [
            {"acltype": acltype, "allow": False}
            for acltype in ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")
        ],
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` (mode 0600) through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _check_writable(directory: Path, variable: str) -> None:
    probe = directory / ".amora-broker-write-probe"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"{directory} is not writable by uid {os.getuid()} ({exc.strerror}): mount a volume there that this "
            f"user owns (Kubernetes: fsGroup; Azure Files: uid/gid mount options), or set {variable}"
        ) from exc


def prepare(settings: Settings) -> tuple[Path, bool]:
    """Check the mounts, write the first dynsec state if needed, render the configuration.

    Returns:
        The rendered configuration file, and whether dynsec was initialised now.

    Raises:
        ConfigError: Something an operator must fix (the message names it).
    """
    _check_readable(settings)
    _check_writable(settings.state_dir, f"{ENV_PREFIX}STATE_DIR")
    _check_writable(settings.run_dir, f"{ENV_PREFIX}RUN_DIR")
    bridge_password = None
    if settings.bridge_password_file is not None:
        bridge_password = _read_secret(
            settings.bridge_password_file, "bridge password", f"{ENV_PREFIX}BRIDGE_PASSWORD_FILE"
        )
    dynsec_file = settings.state_dir / DYNSEC_FILE
    initialised = False
    if not dynsec_file.exists():
        admin_password = _read_secret(
            settings.admin_password_file, "broker admin password", f"{ENV_PREFIX}ADMIN_PASSWORD_FILE"
        )
        state = initial_dynsec(
            admin_username=settings.admin_username,
            admin_password=admin_password,
            # The primary accepts the standby's bridge; the standby's own bridge connects out.
            bridge_username=None if settings.standby else settings.bridge_username,
            bridge_password=None if settings.standby else bridge_password,
        )
        _write_private(dynsec_file, json.dumps(state, indent=2))
        initialised = True
    config = settings.run_dir / "mosquitto.conf"
    _write_private(config, render(settings, bridge_password=bridge_password))
    return config, initialised


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def supervise(argv: Sequence[str], *, crl_file: Path, interval_s: float) -> int:
    """Run mosquitto as a child: forward signals, SIGHUP it when the CRL file changes.

    Returns:
        mosquitto's exit status (128 + signal number when a signal ended it).
    """
    child = subprocess.Popen(argv)  # noqa: S603 - fixed program and rendered config

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    seen = _signature(crl_file)
    while True:
        try:
            code = child.wait(timeout=interval_s)
        except subprocess.TimeoutExpired:
            current = _signature(crl_file)
            # A file being replaced (rename) or written shows up as a new signature; an
            # absent file is left alone: mosquitto keeps the CRL it has.
            if current is not None and current != seen:
                seen = current
                sys.stderr.write(f"amora-broker: {crl_file} changed, reloading (SIGHUP)\n")
                forward(signal.SIGHUP, None)
            continue
        return 128 - code if code < 0 else code


def healthcheck(settings: Settings, *, timeout: float = 3.0) -> bool:
    """Whether the app listener completes a TLS handshake and answers CONNECT with a CONNACK."""
    context = ssl.create_default_context(cafile=str(settings.ca_file)) if settings.ca_file.exists() else None
    if context is None:
        context = ssl.create_default_context()
        context.verify_mode = ssl.CERT_NONE
    # The certificate names the public host, not 127.0.0.1; liveness only needs an answer.
    context.check_hostname = False
    host = "127.0.0.1" if settings.bind_address in {"0.0.0.0", "127.0.0.1"} else settings.bind_address  # noqa: S104
    # MQTT 5 CONNECT: protocol "MQTT" v5, clean start, keepalive 10 s, no properties, client id "".
    connect = b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x0a\x00\x00\x00"
    try:
        with (
            socket.create_connection((host, settings.app_port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname="amora-broker") as tls,
        ):
            tls.sendall(connect)
            return tls.recv(1)[:1] == b"\x20"
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:  # noqa: RET503 - ends in execv, which does not return
    """Run the entrypoint (``run``, ``render`` or ``healthcheck``)."""
    parser = argparse.ArgumentParser(prog="amora-broker", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"amora-broker {os.environ.get('AMORA_VERSION', '?')}")
    parser.add_argument("command", nargs="?", default="run", choices=["run", "render", "healthcheck"])
    args = parser.parse_args(argv)
    try:
        settings = settings_from_env(os.environ)
        if args.command == "healthcheck":
            return 0 if healthcheck(settings) else 1
        if args.command == "render":
            password = None
            if settings.bridge_password_file is not None:
                password = "<from " + str(settings.bridge_password_file) + ">"
            sys.stdout.write(render(settings, bridge_password=password))
            return 0
        config, initialised = prepare(settings)
    except ConfigError as exc:
        sys.stderr.write(f"amora-broker: {exc}\n")
        return 2
    role = "standby" if settings.standby else "primary"
    first = ", dynamic security initialised" if initialised else ""
    tokens = f", broker tokens ({settings.token_public_keys})" if settings.token_public_keys else ""
    sys.stderr.write(f"amora-broker: {role}, config {config}{first}{tokens}; starting mosquitto\n")
    argv = [os.environ.get(ENV_PREFIX + "MOSQUITTO", "/usr/sbin/mosquitto"), "-c", str(config)]
    if settings.crl_watch_s > 0:
        return supervise(argv, crl_file=settings.crl_file, interval_s=settings.crl_watch_s)
    os.execv(argv[0], argv)  # noqa: S606 - fixed program, no shell


if __name__ == "__main__":
    raise SystemExit(main())
