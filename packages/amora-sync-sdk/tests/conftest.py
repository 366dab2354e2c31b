"""The SDK tests' fixtures over the real local stack.

``stack`` / ``pair_stack``: mosquitto (TLS + dynsec) from the harness, one or two brokers, simulated
devices (`sdk_device.Device`) and the stand-in session API (`sdk_standin_authz.StandInAuthz`);
``real_stack``: the real authz service instead (`sdk_real_authz`). The helpers live in
``tests/support`` (on pytest's ``pythonpath``): with ``--import-mode=importlib`` a conftest is
not importable, and one job per module keeps each of them readable.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from sdk_device import WAIT, Device
from sdk_real_authz import RealStack, run_real_authz
from sdk_standin_authz import StandInAuthz

from amora_devtools.broker import (
    BrokerProcess,
    create_device_client,
    start_broker,
    start_broker_pair,
)
from amora_devtools.pki import DevPKI
from amora_sync import AmoraClient, ReconnectPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@dataclass
class Stack:
    pki: DevPKI
    brokers: list[BrokerProcess]
    authz: StandInAuthz
    devices: dict[str, Device]
    token: str = "token-alice"

    @property
    def broker(self) -> BrokerProcess:
        return self.brokers[0]

    def client(self, **kwargs: Any) -> AmoraClient:
        kwargs.setdefault("ca_file", self.pki.ca_file)
        kwargs.setdefault("reconnect", ReconnectPolicy(initial_delay=0.05, max_delay=0.5, connect_timeout=5))
        kwargs.setdefault("connect_timeout", WAIT)
        token = self.token
        return AmoraClient(self.authz.url, lambda: token, **kwargs)


def _build_stack(pki: DevPKI, brokers: list[BrokerProcess], device_ids: list[str]) -> Stack:
    authz = StandInAuthz(brokers)
    devices = {}
    for device_id in device_ids:
        device = Device(device_id, pki)
        device.trusted = authz.trusted_keys()
        for broker in brokers:
            create_device_client(broker, device_id)
        authz.add_device(device_id, device.signing_key.public_key.raw, device.encryption_key.public_key.raw)
        devices[device_id] = device
    authz.add_user("token-alice", "alice", device_ids)
    authz.start()
    return Stack(pki=pki, brokers=brokers, authz=authz, devices=devices)


@pytest.fixture
def sdk_pki(tmp_path: Path) -> DevPKI:
    return DevPKI.create(tmp_path / "pki")


@contextlib.asynccontextmanager
async def _devices_and_authz(pki: DevPKI, brokers: list[BrokerProcess], device_ids: list[str]) -> AsyncIterator[Stack]:
    built = _build_stack(pki, brokers, device_ids)
    try:
        yield built
    finally:
        for device in built.devices.values():
            await device.disconnect()
        built.authz.stop()


@pytest.fixture
async def stack(tmp_path: Path, sdk_pki: DevPKI) -> AsyncIterator[Stack]:
    broker = start_broker(tmp_path / "broker", sdk_pki)
    try:
        async with _devices_and_authz(sdk_pki, [broker], ["player-1", "player-2"]) as built:
            yield built
    finally:
        broker.close()


@pytest.fixture
async def pair_stack(tmp_path: Path, sdk_pki: DevPKI) -> AsyncIterator[Stack]:
    primary, standby = start_broker_pair(tmp_path / "brokers", sdk_pki)
    try:
        async with _devices_and_authz(sdk_pki, [primary, standby], ["player-1"]) as built:
            yield built
    finally:
        standby.close()
        primary.close()


@pytest.fixture
async def real_stack(request: pytest.FixtureRequest, tmp_path: Path, sdk_pki: DevPKI) -> AsyncIterator[RealStack]:
    """The real service; ``indirect`` parametrisation passes extra configuration (a dict)."""
    overrides = dict(getattr(request, "param", None) or {})
    if overrides.get("database_url") == "postgresql":  # the harness's PostgreSQL, from the module's `postgres_url`
        overrides["database_url"] = request.getfixturevalue("postgres_url")
    async with run_real_authz(tmp_path, sdk_pki, overrides) as real:
        yield real
