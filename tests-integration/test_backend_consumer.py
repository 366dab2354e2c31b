"""`amora_sync.backend` on the real stack: verified fleet states split between replicas (issue #13).

Registered devices (`amora_devtools.fakedevice`: real certificates, real signing keys) publish
numbered states; backend replicas consume them through shared subscriptions on the real
brokers, verifying each against keys fetched from the authz service.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from amora_devtools.stack import Stack
from amora_protocol import BackendRole, DeviceState, SigningKey
from amora_sync import ReconnectPolicy
from amora_sync.backend import BackendConsumer, BackendCredentials, FleetMessage

WAIT_S = 20.0
POLICY = ReconnectPolicy(initial_delay=0.05, max_delay=1.0, connect_timeout=3.0)


def _create_backend(stack: Stack, authz_http: Any, role: BackendRole, replicas: int) -> BackendCredentials:
    name = f"{role.value}-{secrets.token_hex(3)}"
    with authz_http(stack, "admin") as http:
        response = http.post("/v1/admin/backends", json={"name": name, "role": role.value, "replicas": replicas})
    assert response.status_code == 201, response.text
    return BackendCredentials.from_admin(response.json())


@contextlib.asynccontextmanager
async def _collect(
    consumer: BackendConsumer, into: list[FleetMessage], *, changed: asyncio.Event
) -> AsyncIterator[asyncio.Task[None]]:
    async def run() -> None:
        async for item in consumer:
            into.append(item)
            changed.set()

    task = asyncio.create_task(run(), name=f"collect-{consumer.replica}")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(changed: asyncio.Event, done: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not done():
            changed.clear()
            await changed.wait()


def _versions(items: list[FleetMessage], device_id: str) -> set[int]:
    return {i.message.version for i in items if isinstance(i.message, DeviceState) and i.device_id == device_id}


async def test_two_replicas_split_every_verified_state_and_drop_forgeries(
    security_stack: Stack, authz_http: Any, fake_device: Any
) -> None:
    stack = security_stack
    assert stack.pki is not None
    credentials = _create_backend(stack, authz_http, BackendRole.ANALYTICS, replicas=2)
    devices = [fake_device(stack, "fleet") for _ in range(2)]
    seen: list[list[FleetMessage]] = [[], []]
    changed = asyncio.Event()
    dropped: list[tuple[str, str]] = []

    def on_invalid(topic: str, reason: str) -> None:
        dropped.append((topic, reason))
        changed.set()

    ca = str(stack.pki.ca_file)
    options: dict[str, Any] = {"ca_file": ca, "reconnect": POLICY, "on_invalid": on_invalid}
    async with (
        BackendConsumer(stack.authz_url, credentials, replica=1, **options) as first,
        BackendConsumer(stack.authz_url, credentials, replica=2, **options) as second,
        _collect(first, seen[0], changed=changed),
        _collect(second, seen[1], changed=changed),
        devices[0],
        devices[1],
    ):
        live = 40
        for _ in range(live):
            for device in devices:
                await device.publish_state(playing=True)
        # A forgery: the right device and topic, another key. Dropped, never handed out.
        forger = devices[0]
        real_key = forger.signing_key
        forger.signing_key = SigningKey.generate()
        forger._sender = None
        async with forger:
            forged = await forger.publish_state(playing=False)
        forger.signing_key = real_key

        def all_there() -> bool:
            items = seen[0] + seen[1]
            return bool(dropped) and all(_versions(items, d.device_id) >= set(range(1, live + 1)) for d in devices)

        await _until(changed, all_there)
        live_items = [i for i in seen[0] + seen[1] if not i.retained and i.device_id.startswith("fleet-")]
        # Split: both replicas got a share of the live states.
        assert {i.slot for i in live_items} == {1, 2}
        assert forged.version not in _versions(seen[0] + seen[1], forger.device_id)
        assert dropped == [(f"amora/devices/{forger.device_id}/state", dropped[0][1])]
        assert "no key the authz service lists" in dropped[0][1]
        assert first.stats.invalid + second.stats.invalid == 1
        assert first.cached_keys >= 2


async def test_a_device_registered_after_start_is_verified_with_its_fetched_key(
    security_stack: Stack, authz_http: Any, fake_device: Any
) -> None:
    stack = security_stack
    assert stack.pki is not None
    credentials = _create_backend(stack, authz_http, BackendRole.ANALYTICS, replicas=1)
    seen: list[FleetMessage] = []
    changed = asyncio.Event()
    async with (
        BackendConsumer(
            stack.authz_url, credentials, replica=1, ca_file=str(stack.pki.ca_file), reconnect=POLICY
        ) as consumer,
        _collect(consumer, seen, changed=changed),
    ):
        newcomer = fake_device(stack, "late")
        assert consumer._keys is not None
        assert consumer._keys.get(newcomer.device_id) is None
        async with newcomer:
            state = await newcomer.publish_state(playing=True)
        await _until(changed, lambda: state.version in _versions(seen, newcomer.device_id))
        assert consumer._keys.refreshes >= 1


class _CrashError(Exception):
    """The application failing while it processes a message."""


async def test_a_message_whose_processing_failed_is_delivered_again(
    security_stack: Stack, authz_http: Any, fake_device: Any
) -> None:
    """At least once: no acknowledgement unless the loop moved on, so the broker sends it again."""
    stack = security_stack
    assert stack.pki is not None
    credentials = _create_backend(stack, authz_http, BackendRole.ANALYTICS, replicas=1)
    device = fake_device(stack, "again")
    options: dict[str, Any] = {"replica": 1, "ca_file": str(stack.pki.ca_file), "reconnect": POLICY}
    async with device:
        tried: list[FleetMessage] = []
        published: list[DeviceState] = []

        async def crash_while_storing() -> None:
            async with BackendConsumer(stack.authz_url, credentials, **options) as consumer, asyncio.timeout(WAIT_S):
                published.append(await device.publish_state(playing=True))
                async for item in consumer:
                    if item.device_id == device.device_id and not item.retained:
                        tried.append(item)
                        raise _CrashError  # dies while "storing" it: never acknowledged

        with pytest.raises(_CrashError):
            await crash_while_storing()
        (first_try,), (state,) = tried, published
        assert isinstance(first_try.message, DeviceState)
        assert first_try.message.version == state.version
        # The same slot again (a restarted replica): the broker resends it from the session.
        async with BackendConsumer(stack.authz_url, credentials, **options) as consumer:
            async with asyncio.timeout(WAIT_S):
                async for item in consumer:
                    if item.device_id == device.device_id and not item.retained:
                        break
            assert isinstance(item.message, DeviceState)
            assert item.message.version == state.version
            assert item.redelivered
