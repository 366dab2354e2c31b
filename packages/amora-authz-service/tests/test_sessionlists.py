"""The session-list publisher without a broker: what it does when one is unreachable."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import gmqtt
import structlog

from amora_authz._dynsec import BrokerEndpoint
from amora_authz._sessionlists import SessionListPublisher
from amora_protocol import SigningKey

if TYPE_CHECKING:
    import pytest


class _NoDevices:
    """Just enough of a store: alice's one device has no live session (so its list is empty)."""

    async def active_devices_of_users(self, users: list[str]) -> dict[str, list[Any]]:
        return {u: [SimpleNamespace(device_id="p1")] for u in users}

    async def sessions_of_devices(self, device_ids: set[str], *, now_ms: int) -> dict[str, tuple[str, ...]]:
        assert now_ms > 0
        return dict.fromkeys(device_ids, ())


async def test_an_unreachable_broker_is_not_retried_by_every_api_call(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []
    real_connect = gmqtt.Client.connect

    async def counting(self: gmqtt.Client, *args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        return await real_connect(self, *args, **kwargs)

    monkeypatch.setattr(gmqtt.Client, "connect", counting)
    publisher = SessionListPublisher(
        [BrokerEndpoint(name="gone", host="127.0.0.1", port=1, username="x", password="y", tls=False)],
        _NoDevices(),  # type: ignore[arg-type]
        signing_key=SigningKey.generate(),
        password="pw",
        logger=structlog.get_logger("test"),
        timeout_s=2.0,
    )
    await publisher.publish(devices=["p1"])
    await publisher.publish(users=["alice"])
    assert len(attempts) == 1  # the second call skipped the broker that was just down
    assert publisher.published_total == 0
    await publisher.close()
