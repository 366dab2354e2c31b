"""The authz service as the harness runs it: SQLite, the development issuer on, loopback only.

DEVELOPMENT ONLY: its development issuer signs a token for any configured user name.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from amora_devtools._errors import ServiceStartError
from amora_devtools._files import private_dir, write_private
from amora_devtools._proc import ManagedProcess, free_port, tail, wait_until
from amora_devtools._toml import toml_value

if TYPE_CHECKING:
    from collections.abc import Sequence

    from amora_devtools.broker import BrokerProcess
    from amora_devtools.pki import DevPKI

__all__ = ["ADMIN_USER", "READY_TIMEOUT", "console_script", "make_broker_token_key", "start_authz"]

ADMIN_USER = "admin"
READY_TIMEOUT = 30.0


def console_script(name: str) -> str:
    """A console script of this environment (installed next to the running interpreter)."""
    return str(Path(sys.executable).with_name(name))


def make_broker_token_key(directory: Path) -> tuple[Path, Path]:
    """Make a broker token key pair with the service's own CLI: (private key, public key PEM).

    Token mode: the brokers' ``amora_auth`` plugin loads the public file
    (``TokenPlugin(public_keys=...)``), so make the pair before starting them, and pass the
    private file to `start_authz` as ``broker_token_key``. An existing pair is reused.

    Raises:
        ServiceStartError: the CLI refused (its one-line reason is in the message).
    """
    private_dir(directory)
    private, public = directory / "broker-token-key.pem", directory / "broker-token-keys.pem"
    script = console_script("amora-authz")
    steps = []
    if not private.exists():
        steps.append([script, "broker-token-key", "generate", "--out", str(private)])
    steps.append([script, "broker-token-key", "public", "--key", str(private), "--out", str(public)])
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603 - our own CLI
        if done.returncode != 0:
            raise ServiceStartError("amora-authz broker-token-key", done.stderr.strip())
    return private, public


def start_authz(  # noqa: PLR0913 - each is a deployment choice
    directory: Path,
    pki: DevPKI,
    brokers: Sequence[BrokerProcess],
    *,
    users: Sequence[str],
    admins: Sequence[str] = (ADMIN_USER,),
    crl_reload_command: Sequence[str] = (),
    session_ttl_s: int = 3600,
    rate_limits: bool = True,
    port: int | None = None,
    broker_token_key: Path | None = None,
) -> tuple[ManagedProcess, str]:
    """Start the authz service (SQLite, development issuer on) for ``brokers``; wait until ready.

    ``rate_limits=False`` turns the service's per-user and global rate limits off (for
    benchmarks that create thousands of sessions); the stack keeps the defaults. ``port``
    fixes the HTTP port (default: a free one). ``broker_token_key`` (a private key from
    `make_broker_token_key`) runs the service in token mode (``[broker] credentials = "token"``);
    the brokers must then load the plugin with its public key.

    Returns:
        The process and the service's base URL.

    Raises:
        ServiceStartError: It exited or did not answer ``/readyz`` in time.
    """
    private_dir(directory)  # the database, the signing key, the session secret
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    lines = [
        f"database_url = {toml_value('sqlite://' + str(directory / 'authz.db'))}",
        'listen_host = "127.0.0.1"',
        f"listen_port = {port}",
        f"state_dir = {toml_value(str(directory))}",
        f"device_ca_cert = {toml_value(str(pki.ca_file))}",
        f"device_ca_key = {toml_value(str(pki.ca_key_file))}",
        f"crl_file = {toml_value(str(pki.crl_file))}",
        f"crl_reload_command = {json.dumps(list(crl_reload_command))}",
        f"session_ttl_s = {session_ttl_s}",
        "reconcile_interval_s = 30.0",
        "log_json = true",
        'log_level = "warning"',
        "",
        "[dev_issuer]",
        "enabled = true",
        f"users = {json.dumps(list(users))}",
        f"admins = {json.dumps(list(admins))}",
        "",
        "[rate_limits]",
        # Benchmarks that measure throughput turn the service's limits off.
        f"enabled = {'true' if rate_limits else 'false'}",
    ]
    if broker_token_key is not None:
        lines += [
            "",
            "[broker]",
            'credentials = "token"',
            f"token_key_file = {toml_value(str(broker_token_key))}",
        ]
    for broker in brokers:
        endpoints = [f"mqtts://{broker.host}:{broker.app_port}", f"wss://localhost:{broker.ws_port}/mqtt"]
        lines += [
            "",
            "[[brokers]]",
            f"name = {toml_value(broker.name)}",
            f"host = {toml_value(broker.host)}",
            f"port = {broker.app_port}",
            f"username = {toml_value(broker.admin_username)}",
            f"password = {toml_value(broker.admin_password)}",
            f"ca_file = {toml_value(str(broker.ca_file))}",
            f"dynsec_file = {toml_value(str(broker.dynsec_file))}",
            f"client_endpoints = {json.dumps(endpoints)}",
        ]
    config = directory / "authz.toml"
    write_private(config, "\n".join(lines) + "\n")  # holds the brokers' admin passwords
    log = directory / "authz.log"
    process = ManagedProcess(
        "amora-authz", [console_script("amora-authz"), "--config", str(config), "serve"], log_file=log
    )

    def ready() -> bool | None:
        if not process.alive():
            raise ServiceStartError("amora-authz", tail(log))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return True
        return None

    try:
        answered = wait_until(ready, timeout=READY_TIMEOUT, interval=0.05)
    except BaseException:
        process.stop()
        raise
    if answered is None:
        process.stop()
        raise ServiceStartError("amora-authz", "not ready in time\n" + tail(log))
    return process, url
