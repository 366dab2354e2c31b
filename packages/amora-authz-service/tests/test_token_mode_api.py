"""Token mode through the HTTP API, with no broker configured: what a session's token says, and
which changes end sessions with a revocation in the database.

The same against real mosquitto with the plugin: ``test_token_mode_broker.py``.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.jwk import ECKey

from amora_authz._revocations import REVOCATION_MARGIN_S
from amora_authz._store import Device
from amora_authz.testing import RunningService, broker_token_key, dev_settings, serve, session_body, token_mode
from amora_protocol import EncryptionKey, SigningKey

if TYPE_CHECKING:
    from pathlib import Path


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def _register(svc: RunningService, device_id: str, *users: str) -> None:
    admin = await svc.auth("admin")
    response = await svc.http.post(
        "/v1/admin/devices",
        json={
            "device_id": device_id,
            "signing_key": _b64(SigningKey.generate().public_key.raw),
            "encryption_key": _b64(EncryptionKey.generate().public_key.raw),
        },
        headers=admin,
    )
    assert response.status_code == 201, response.text
    for user in users:
        assert (await svc.http.put(f"/v1/admin/users/{user}/devices/{device_id}", headers=admin)).status_code == 201


async def _login(svc: RunningService, user: str) -> dict[str, Any]:
    response = await svc.http.post("/v1/sessions", json=session_body(), headers=await svc.auth(user))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _claims(token: str, folder: Path) -> dict[str, Any]:
    _, public = broker_token_key(folder)
    key = ECKey.import_key(public.read_bytes())
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["ES256"]).claims
    return claims


def _topics(claims: dict[str, Any]) -> set[tuple[str, str]]:
    return {(rule["action"], rule["topic"]) for rule in claims["acl"]}


async def test_a_session_s_password_is_a_token_for_its_devices_and_refresh_issues_a_new_one(tmp_path: Path) -> None:
    async with serve(dev_settings(tmp_path, broker=token_mode(tmp_path))) as svc:
        await _register(svc, "player-1", "alice")
        await _register(svc, "player-2")
        session = await _login(svc, "alice")
        broker = session["broker"]
        assert broker["username"] == broker["client_id"] == session["session_id"]
        claims = _claims(broker["password"], tmp_path)
        assert claims["iss"] == "amora-authz"
        assert claims["aud"] == "amora-broker"
        assert claims["sub"] == "alice"
        assert claims["username"] == claims["clientid"] == session["session_id"]
        assert claims["exp"] == session["expires_at"] // 1000
        assert _topics(claims) == {
            ("subscribe", "amora/devices/player-1/state"),
            ("subscribe", "amora/devices/player-1/connection"),
            ("subscribe", "amora/devices/player-1/responses"),
            ("publish", "amora/devices/player-1/commands"),
        }
        # Nothing about the session is on any broker, and nothing was revoked.
        assert await svc.runtime.store.live_revocations(now_s=0) == {}

        svc.runtime.service.session_ttl_s = 7200  # a refresh later on extends the session
        refreshed = await svc.http.post(
            f"/v1/sessions/{session['session_id']}/refresh", headers=await svc.auth("alice")
        )
        assert refreshed.status_code == 200, refreshed.text
        again = refreshed.json()
        assert again["broker"]["username"] == again["broker"]["client_id"] == session["session_id"]
        assert again["broker"]["password"] != broker["password"]
        new_claims = _claims(again["broker"]["password"], tmp_path)
        assert new_claims["exp"] == again["expires_at"] // 1000 > claims["exp"]
        assert _topics(new_claims) == _topics(claims)


async def test_logout_link_unlink_and_eviction_end_sessions_with_a_revocation(tmp_path: Path, store_url: str) -> None:
    settings = dev_settings(tmp_path, database_url=store_url, broker=token_mode(tmp_path), max_sessions_per_user=2)
    async with serve(settings) as svc:
        store, admin = svc.runtime.store, await svc.auth("admin")
        await _register(svc, "player-1", "alice")
        await _register(svc, "player-2")

        first = await _login(svc, "alice")
        logout = await svc.http.delete(f"/v1/sessions/{first['session_id']}", headers=await svc.auth("alice"))
        assert logout.status_code == 204
        revoked = await store.live_revocations(now_s=0)
        # Until the token's expiry (rounded up to the second) plus the clock margin.
        assert revoked == {first["session_id"]: -(-first["expires_at"] // 1000) + REVOCATION_MARGIN_S}

        # Linking a device ends the user's sessions: their tokens lack it.
        second = await _login(svc, "alice")
        bobs = await _login(svc, "bob")
        assert (await svc.http.put("/v1/admin/users/alice/devices/player-2", headers=admin)).status_code == 201
        assert await store.get_session(second["session_id"]) is None
        assert await store.get_session(bobs["session_id"]) is not None  # another user's stay
        assert second["session_id"] in await store.live_revocations(now_s=0)
        third = await _login(svc, "alice")
        assert ("publish", "amora/devices/player-2/commands") in _topics(_claims(third["broker"]["password"], tmp_path))
        # Linking again what is linked changes nothing.
        assert (await svc.http.put("/v1/admin/users/alice/devices/player-2", headers=admin)).status_code == 200
        assert await store.get_session(third["session_id"]) is not None

        # Unlinking ends them too: their tokens still name the device.
        assert (await svc.http.delete("/v1/admin/users/alice/devices/player-2", headers=admin)).status_code == 204
        assert await store.get_session(third["session_id"]) is None
        assert third["session_id"] in await store.live_revocations(now_s=0)
        refresh = await svc.http.post(f"/v1/sessions/{third['session_id']}/refresh", headers=await svc.auth("alice"))
        assert refresh.status_code == 404

        # Beyond max_sessions_per_user the oldest ends, revoked until its own token's expiry.
        a, b = await _login(svc, "alice"), await _login(svc, "alice")
        c = await _login(svc, "alice")
        assert await store.get_session(a["session_id"]) is None
        assert {b["session_id"], c["session_id"]} <= {s.session_id for s in await store.active_sessions(now_ms=0)}
        assert await store.live_revocations([a["session_id"]], now_s=0) == {
            a["session_id"]: -(-a["expires_at"] // 1000) + REVOCATION_MARGIN_S
        }

        # Revoking a device ends its users' sessions.
        d = await _login(svc, "alice")
        revoke = await svc.http.post("/v1/admin/devices/player-1/revoke", headers=admin)
        assert revoke.status_code == 200, revoke.text
        assert await store.get_session(d["session_id"]) is None
        assert d["session_id"] in await store.live_revocations(now_s=0)
        assert await store.get_session(bobs["session_id"]) is not None


async def test_the_expiry_sweep_revokes_expired_sessions_and_drops_past_revocations(tmp_path: Path) -> None:
    async with serve(dev_settings(tmp_path, broker=token_mode(tmp_path))) as svc:
        service, store = svc.runtime.service, svc.runtime.store
        session = await _login(svc, "alice")
        await store.record_revocations({"sess.long-gone": ("bob", 1)}, at_ms=0)
        later = session["expires_at"] + 1
        service._clock_ms = lambda: later
        assert await service.expire_sessions() == [session["session_id"]]
        assert await store.live_revocations(now_s=0) == {
            session["session_id"]: -(-session["expires_at"] // 1000) + REVOCATION_MARGIN_S
        }


async def test_more_devices_than_a_token_carries_refuses_the_login_and_ends_nothing(tmp_path: Path) -> None:
    settings = dev_settings(tmp_path, broker=token_mode(tmp_path), max_sessions_per_user=1)
    async with serve(settings) as svc:
        store = svc.runtime.store
        kept = await _login(svc, "alice")
        for n in range(65):
            await store.add_device(
                Device(device_id=f"player-{n}", signing_key=b"s" * 32, encryption_key=b"e" * 32, created_at_ms=1)
            )
            await store.link("alice", f"player-{n}", at_ms=1)
        response = await svc.http.post("/v1/sessions", json=session_body(), headers=await svc.auth("alice"))
        assert response.status_code == 422
        assert response.json()["code"] == "too_many_devices"
        # The refused login kept nothing and ended nothing (the cap is 1: it would have evicted).
        assert [s.session_id for s in await store.active_sessions(now_ms=0)] == [kept["session_id"]]
        assert await store.live_revocations(now_s=0) == {}
