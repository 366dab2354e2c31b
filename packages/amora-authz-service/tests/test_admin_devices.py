"""Admin API: devices listed a page at a time with filters, one device in full, link 201/200."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import pytest

from amora_authz.testing import RunningService as Running
from amora_authz.testing import dev_settings, serve
from amora_protocol import EncryptionKey, SigningKey

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with serve(dev_settings(tmp_path)) as svc:
        yield svc


async def _register(svc: Running, device_id: str) -> str:
    signing = base64.b64encode(SigningKey.generate().public_key.raw).decode()
    body = {
        "device_id": device_id,
        "signing_key": signing,
        "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
    }
    response = await svc.http.post("/v1/admin/devices", json=body, headers=await svc.auth("admin"))
    assert response.status_code == 201
    return signing


async def test_link_says_whether_it_created_the_link(running: Running) -> None:
    admin = await running.auth("admin")
    await _register(running, "p1")
    first = await running.http.put("/v1/admin/users/alice/devices/p1", headers=admin)
    assert (first.status_code, first.json()["created"]) == (201, True)
    again = await running.http.put("/v1/admin/users/alice/devices/p1", headers=admin)
    assert (again.status_code, again.json()["created"]) == (200, False)


async def test_devices_are_listed_a_page_at_a_time_with_filters(running: Running) -> None:
    admin = await running.auth("admin")
    for index in range(5):
        await _register(running, f"kitchen-{index}")
    await _register(running, "hall-1")
    await running.http.put("/v1/admin/users/alice/devices/kitchen-3", headers=admin)
    assert (await running.http.post("/v1/admin/devices/kitchen-4/revoke", headers=admin)).status_code == 200

    seen: list[str] = []
    after: str | None = None
    for _ in range(10):  # bounded: 6 devices, pages of 2
        params = {"limit": 2} | ({"after": after} if after else {})
        page = (await running.http.get("/v1/admin/devices", params=params, headers=admin)).json()
        seen += [d["device_id"] for d in page["devices"]]
        after = page["next"]
        if after is None:
            break
    assert seen == ["hall-1", *(f"kitchen-{i}" for i in range(5))]

    async def ids(**params: str) -> list[str]:
        response = await running.http.get("/v1/admin/devices", params=params, headers=admin)
        assert response.status_code == 200, response.text
        return [d["device_id"] for d in response.json()["devices"]]

    assert await ids(prefix="kitchen-", revoked="false") == [f"kitchen-{i}" for i in range(4)]
    assert await ids(revoked="true") == ["kitchen-4"]
    assert await ids(user="alice") == ["kitchen-3"]
    assert await ids(prefix="%") == []  # a prefix is literal, not a LIKE pattern
    too_many = await running.http.get("/v1/admin/devices", params={"limit": 501}, headers=admin)
    assert too_many.status_code == 422
    user_only = await running.http.get("/v1/admin/devices", headers=await running.auth("alice"))
    assert user_only.status_code == 403


async def test_one_device_in_full(running: Running) -> None:
    admin = await running.auth("admin")
    signing = await _register(running, "p7")
    await running.http.put("/v1/admin/users/bob/devices/p7", headers=admin)
    await running.http.put("/v1/admin/users/alice/devices/p7", headers=admin)
    device = (await running.http.get("/v1/admin/devices/p7", headers=admin)).json()
    assert device["device_id"] == "p7"
    assert device["signing_key"] == signing
    assert device["users"] == ["alice", "bob"]
    assert device["certificates"] == []
    assert device["revoked_at_ms"] is None
    missing = await running.http.get("/v1/admin/devices/nope", headers=admin)
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
