"""`amora_sync.backend` without a broker: the key cache, the takeover ring, credentials, the duplicate key.

The broker side (shared subscriptions, verification, replicas taking over a killed one) is in
``tests-integration/test_backend_consumer.py`` and ``test_analytics_failover.py``.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from amora_protocol import (
    BackendRole,
    CommandResponse,
    CommandStatus,
    ConnectionStatus,
    DeviceState,
    PlaybackStatus,
    SigningKey,
)
from amora_sync import AuthenticationError, AuthzUnavailableError
from amora_sync._backend import _identity, _successor
from amora_sync.backend import BackendConsumer, BackendCredentials, DeviceKeyCache


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _keys_json(device_id: str, key: SigningKey) -> dict[str, str]:
    return {
        "device_id": device_id,
        "signing_key": base64.b64encode(key.public_key.raw).decode(),
        "encryption_key": base64.b64encode(bytes(32)).decode(),
    }


class _Authz:
    """``/v1/backend/devices`` in process: a page per request, one device on request."""

    def __init__(self, devices: dict[str, SigningKey], *, page: int = 2) -> None:
        self.devices = devices
        self.page = page
        self.requests: list[str] = []
        self.status: int | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url.path) + ("?" + request.url.query.decode() if request.url.query else ""))
        if self.status is not None:
            return httpx.Response(self.status, json={"code": "x", "message": "refused"})
        path = request.url.path
        if path == "/v1/backend/devices":
            after = request.url.params.get("after")
            ids = sorted(d for d in self.devices if after is None or d > after)
            chunk = ids[: self.page]
            following = chunk[-1] if len(ids) > self.page else None
            return httpx.Response(
                200, json={"devices": [_keys_json(d, self.devices[d]) for d in chunk], "next": following}
            )
        device_id = path.rsplit("/", 1)[1]
        if device_id not in self.devices:
            return httpx.Response(404, json={"code": "not_found", "message": "no active device"})
        return httpx.Response(200, json=_keys_json(device_id, self.devices[device_id]))

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url="http://authz.test", transport=httpx.MockTransport(self))


async def test_the_cache_loads_every_page_and_refreshes_an_unknown_device_at_a_bounded_rate() -> None:
    keys = {f"player-{n}": SigningKey.generate() for n in range(5)}
    authz = _Authz(dict(keys))
    clock = _Clock()
    async with authz.client() as http:
        cache = DeviceKeyCache(http, min_refresh_interval=5.0, refresh_rate=1.0, clock=clock)
        assert await cache.load() == 5
        assert len([r for r in authz.requests if r.startswith("/v1/backend/devices?")]) == 3  # pages of 2
        first = cache.get("player-0")
        assert first is not None
        assert first.raw == keys["player-0"].public_key.raw
        # A device registered after the load: fetched on demand, once.
        newcomer = SigningKey.generate()
        authz.devices["player-9"] = newcomer
        fetched = await cache.refresh("player-9")
        assert fetched is not None
        assert fetched.raw == newcomer.public_key.raw
        # Asked again at once: not fetched again (per-device interval); the cached key answers.
        assert await cache.refresh("player-9") is fetched
        assert cache.refreshes == 1
        # Garbage naming made-up devices: the global bucket (burst 10 at 1/s) stops the requests.
        for n in range(30):
            assert await cache.refresh(f"ghost-{n}") is None
        assert cache.refreshes == 10  # player-9 and nine ghosts: the burst of 10
        clock.now += 5.0  # the bucket refills at 1/s: five more
        for n in range(30, 40):
            await cache.refresh(f"ghost-{n}")
        assert cache.refreshes == 15


async def test_a_revoked_device_leaves_the_cache_and_errors_name_their_cause() -> None:
    authz = _Authz({"player-1": SigningKey.generate()})
    async with authz.client() as http:
        cache = DeviceKeyCache(http)
        await cache.load()
        del authz.devices["player-1"]  # revoked since
        assert await cache.refresh("player-1") is None
        assert cache.get("player-1") is None
        authz.status = 401
        with pytest.raises(AuthenticationError, match=r"POST /v1/admin/backends"):
            await cache.load()
        authz.status = 503
        with pytest.raises(AuthzUnavailableError, match="503"):
            await cache.load()


def test_a_down_slot_is_served_by_the_next_live_slot_in_ring_order() -> None:
    assert _successor(2, 3, {1, 3}) == 3
    assert _successor(3, 3, {1, 2}) == 1  # wraps around
    assert _successor(1, 4, {3}) == 3
    assert _successor(2, 4, {1}) == 1
    # Every down slot has exactly one live successor, so exactly one replica takes it over.
    for live in ({1}, {2}, {1, 3}, {2, 3, 4}):
        for slot in set(range(1, 5)) - live:
            assert _successor(slot, 4, live) in live


def test_duplicates_are_recognised_by_device_kind_and_version() -> None:
    state = DeviceState(device_id="player-1", version=7, status=PlaybackStatus.PLAY, sampled_at_ms=1)
    resampled = DeviceState(device_id="player-1", version=7, status=PlaybackStatus.PLAY, sampled_at_ms=2)
    assert _identity(state) == _identity(resampled)  # the same version is the same state
    newer = DeviceState(device_id="player-1", version=8, status=PlaybackStatus.PLAY, sampled_at_ms=3)
    assert _identity(state) != _identity(newer)
    online = ConnectionStatus(device_id="player-1", online=True, at_ms=5, version=7)
    assert _identity(online) != _identity(state)
    answered = CommandResponse(command_id="c1", device_id="player-1", status=CommandStatus.SUCCEEDED, at_ms=9)
    repeated = CommandResponse(
        command_id="c1", device_id="player-1", status=CommandStatus.SUCCEEDED, at_ms=9, duplicate=True
    )
    assert _identity(answered) != _identity(repeated)  # a device's "duplicate" answer is news too


def test_credentials_come_from_the_admin_answer_and_bad_ones_are_refused() -> None:
    answer = {
        "backend": {"name": "stats", "role": "analytics", "replicas": 2},
        "password": "pw",
        "endpoints": ["mqtts://broker.example:8884", "wss://broker.example:8443"],
    }
    credentials = BackendCredentials.from_admin(answer)
    assert credentials.role is BackendRole.ANALYTICS
    assert [str(e) for e in credentials.endpoints] == ["broker.example:8884"]  # MQTT over TLS preferred
    assert "pw" not in repr(credentials)
    with pytest.raises(ValueError, match="missing 'password'"):
        BackendCredentials.from_admin({"backend": answer["backend"], "endpoints": []})
    with pytest.raises(ValueError, match="invalid backend name"):
        BackendCredentials.from_admin(answer | {"backend": {"name": "Bad/Name", "role": "analytics", "replicas": 1}})
    with pytest.raises(ValueError, match="no MQTT-over-TLS broker endpoint"):
        BackendCredentials.from_admin(answer | {"endpoints": ["wss://only.example:8443"]})
    with pytest.raises(ValueError, match=r"replica must be 1\.\.2"):
        BackendConsumer("http://authz.test", credentials, replica=3)
