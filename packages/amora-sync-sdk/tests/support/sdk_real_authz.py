"""The real amora-authz-service for the SDK tests: its own process, development issuer on, over a harness broker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sdk_device import WAIT, Device
from sdk_standin_authz import b64

from amora_devtools.broker import (
    BrokerProcess,
    dynsec,
    start_broker,
)
from amora_protocol import (
    VerifyKey,
    keyring,
)
from amora_sync import AmoraClient, ReconnectPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from amora_devtools.pki import DevPKI


__all__ = ["RealStack", "run_real_authz"]


@dataclass
class RealStack:
    """The real amora-authz-service (its own process, dev issuer on) over a harness broker."""

    pki: DevPKI
    broker: BrokerProcess
    url: str
    devices: dict[str, Device]

    async def token(self, user: str) -> str:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(f"{self.url}/dev-issuer/token", json={"username": user})
        response.raise_for_status()
        return str(response.json()["access_token"])

    async def add_device(self, device_id: str, *, link_to: str) -> Device:
        """Register a device through the admin API, link it to a user, wait for its broker client."""
        admin = {"Authorization": f"Bearer {await self.token('admin')}"}
        device = Device(device_id, self.pki)
        async with httpx.AsyncClient(base_url=self.url, timeout=10, headers=admin) as http:
            registered = await http.post(
                "/v1/admin/devices",
                json={
                    "device_id": device_id,
                    "signing_key": b64(device.signing_key.public_key.raw),
                    "encryption_key": b64(device.encryption_key.public_key.raw),
                },
            )
            registered.raise_for_status()
            (await http.put(f"/v1/admin/users/{link_to}/devices/{device_id}")).raise_for_status()
            keys = (await http.get("/.well-known/amora-keys")).json()["keys"]
        device.trusted = keyring(VerifyKey.from_raw(base64.b64decode(k["public_key"])) for k in keys)
        await _wait_device_client(self.broker, device_id)
        self.devices[device_id] = device
        return device

    def client(self, user: str = "alice", **kwargs: Any) -> AmoraClient:
        kwargs.setdefault("ca_file", self.pki.ca_file)
        kwargs.setdefault("reconnect", ReconnectPolicy(initial_delay=0.05, max_delay=0.5, connect_timeout=5))
        kwargs.setdefault("connect_timeout", WAIT)

        async def token() -> str:
            return await self.token(user)

        return AmoraClient(self.url, token, **kwargs)


def _authz_executable() -> Path | None:
    if importlib.util.find_spec("amora_authz") is None:
        return None
    script = Path(sys.executable).parent / "amora-authz"
    return script if script.exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(timeout=2) as http, asyncio.timeout(WAIT):
        while proc.returncode is None:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)  # bounded readiness poll of a process we started
    raise RuntimeError("amora-authz exited during start-up")


async def _wait_device_client(broker: BrokerProcess, device_id: str) -> None:
    # The service reconciles the broker after each change; wait until the device's client exists.
    async with asyncio.timeout(WAIT):
        while True:
            answer = await asyncio.to_thread(
                dynsec, broker, [{"command": "getClient", "username": device_id}], check=False
            )
            if not answer[0].get("error"):
                return
            await asyncio.sleep(0.1)  # bounded poll of the broker's state


@contextlib.asynccontextmanager
async def run_real_authz(tmp_path: Path, sdk_pki: DevPKI, extra: dict[str, Any]) -> AsyncIterator[RealStack]:
    """Run the service over a fresh broker with ``player-1`` linked to alice; ``extra`` adds configuration."""
    executable = _authz_executable()
    if executable is None:
        pytest.skip("amora-authz-service is not installed in this environment")
    broker = start_broker(tmp_path / "broker", sdk_pki)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    config = {
        "database_url": f"sqlite://{tmp_path / 'authz.db'}",
        "listen_host": "127.0.0.1",
        "listen_port": port,
        "public_url": url,
        "state_dir": str(tmp_path / "authz-state"),
        "session_ttl_s": 600,
        "log_json": False,
        "log_level": "warning",
        "expiry_check_interval_s": 1.0,
        "dev_issuer": {"enabled": True, "users": ["alice", "bob", "admin"], "admins": ["admin"]},
        "brokers": [
            {
                "name": "primary",
                "host": broker.host,
                "port": broker.app_port,
                "username": broker.admin_username,
                "password": broker.admin_password,
                "ca_file": str(broker.ca_file),
                "client_endpoints": [f"mqtts://{broker.host}:{broker.app_port}"],
            }
        ],
    }
    config.update(extra)
    config_file = tmp_path / "authz.toml"
    config_file.write_text(_toml(config))
    log = (tmp_path / "authz.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(executable), "--config", str(config_file), "serve", stdout=log, stderr=log
    )
    stack: RealStack | None = None
    try:
        try:
            await _wait_ready(url, proc)
        except (RuntimeError, TimeoutError) as exc:
            log.flush()
            tail = (tmp_path / "authz.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"amora-authz did not become ready:\n{tail}") from exc
        stack = RealStack(pki=sdk_pki, broker=broker, url=url, devices={})
        await stack.add_device("player-1", link_to="alice")
        yield stack
    finally:
        if stack is not None:
            for device in stack.devices.values():
                await device.disconnect()
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
        broker.close()


def _toml_value(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int | float):
        return str(item)
    if isinstance(item, str):
        return json.dumps(item)
    if isinstance(item, list):
        return "[" + ", ".join(_toml_value(i) for i in item) + "]"
    raise TypeError(item)


def _toml_table(name: str, table: dict[str, Any]) -> list[str]:
    lines = ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for sub, inner in table.items():
        if isinstance(inner, dict):
            lines += _toml_table(f"{name}.{sub}", inner)
    return lines


def _toml(data: dict[str, Any]) -> str:
    """A tiny TOML writer for the service's configuration (strings, numbers, lists, tables)."""
    lines = [
        f"{k} = {_toml_value(v)}"
        for k, v in data.items()
        if not isinstance(v, dict) and (not isinstance(v, list) or _plain(v))
    ]
    for key, table in data.items():
        if isinstance(table, dict):
            lines += _toml_table(key, table)
        elif isinstance(table, list) and not _plain(table):
            for entry in table:
                lines += ["", f"[[{key}]]"] + [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def _plain(items: list[Any]) -> bool:
    return all(not isinstance(i, dict) for i in items)
