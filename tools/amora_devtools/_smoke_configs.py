"""The authz service's and the simulated player's configurations inside the images (image smoke test).

Paths are where the images expect their mounts: secrets under ``/run/secrets/amora``, the CRL
under ``/run/amora/crl``, state volumes under ``/var/lib``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amora_devtools._toml import toml_value

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["ADMIN", "USER", "agent_config", "authz_config"]

ADMIN = "admin"
USER = "alice"


def authz_config(port: int, brokers: Sequence[tuple[str, int, int]], admin_password: str) -> str:
    lines = [
        'database_url = "sqlite:///var/lib/amora-authz/authz.db"',
        'listen_host = "127.0.0.1"',
        f"listen_port = {port}",
        f"public_url = {toml_value(f'http://127.0.0.1:{port}')}",
        'state_dir = "/var/lib/amora-authz/state"',
        'device_ca_cert = "/run/secrets/amora/device-ca.pem"',
        'device_ca_key = "/run/secrets/amora/device-ca.key"',
        'crl_file = "/run/amora/crl/devices.crl.pem"',
        # The brokers run in other containers: the smoke test sends them SIGHUP itself.
        "crl_reload_command = []",
        'log_level = "info"',
        "",
        "[dev_issuer]",
        "enabled = true",
        f"users = {toml_value([USER, ADMIN])}",
        f"admins = {toml_value([ADMIN])}",
    ]
    for name, app_port, ws_port in brokers:
        lines += [
            "",
            "[[brokers]]",
            f"name = {toml_value(name)}",
            'host = "127.0.0.1"',
            f"port = {app_port}",
            'username = "svc.amora-authz"',
            f"password = {toml_value(admin_password)}",
            'ca_file = "/run/secrets/amora/device-ca.pem"',
            f"client_endpoints = {toml_value([f'mqtts://localhost:{app_port}', f'wss://localhost:{ws_port}/mqtt'])}",
        ]
    return "\n".join(lines) + "\n"


def agent_config(device_id: str, device_port: int, authz_keys: Sequence[str]) -> str:
    inside = f"/etc/amora-sim/{device_id}"
    return "\n".join([
        f"device_id = {toml_value(device_id)}",
        f"state_dir = {toml_value('/var/lib/amora-sim/' + device_id)}",
        "state_fsync = false",
        "",
        "[keys]",
        f"signing_key_file = {toml_value(inside + '/signing.pem')}",
        f"encryption_key_file = {toml_value(inside + '/encryption.pem')}",
        f"trusted_authz_keys = {toml_value(list(authz_keys))}",
        "",
        "[tls]",
        'ca_file = "/run/secrets/amora/device-ca.pem"',
        f"cert_file = {toml_value(inside + '/device.pem')}",
        f"key_file = {toml_value(inside + '/device.key')}",
        "",
        "[mqtt]",
        "backoff_initial_s = 0.2",
        "backoff_max_s = 5.0",
        "",
        "[[brokers]]",
        'host = "127.0.0.1"',
        f"port = {device_port}",
        "",
        "[player]",
        'kind = "simulated"',
    ]) + "\n"  # fmt: skip
