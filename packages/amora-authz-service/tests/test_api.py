"""The HTTP API over real HTTP (uvicorn on loopback), tokens from the dev issuer.

No broker here (brokers = ()): what the broker enforces is in test_broker_access.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from amora_authz.testing import RunningService as Running
from amora_authz.testing import dev_settings, serve, session_body
from amora_protocol import (
    Codec,
    Command,
    EncryptionKey,
    Play,
    Right,
    Sender,
    SigningKey,
    Unauthorized,
    UnknownKey,
    VerifyKey,
    commands_topic,
    keyring,
    verify_command,
    verify_grant,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with serve(dev_settings(tmp_path)) as svc:
        yield svc


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def device_body(device_id: str, **extra: object) -> dict[str, object]:
    return {
        "device_id": device_id,
        "signing_key": b64(SigningKey.generate().public_key.raw),
        "encryption_key": b64(EncryptionKey.generate().public_key.raw),
        **extra,
    }


async def test_dev_issuer_publishes_discovery_and_jwks(running: Running) -> None:
    doc = (await running.http.get("/dev-issuer/.well-known/openid-configuration")).json()
    assert doc["issuer"] == running.base_url + "/dev-issuer"
    jwks = (await running.http.get("/dev-issuer/jwks")).json()
    assert [k["kty"] for k in jwks["keys"]] == ["RSA"]
    assert "d" not in jwks["keys"][0]  # public half only
    refused = await running.http.post("/dev-issuer/token", json={"username": "mallory"})
    assert refused.status_code == 403
    assert refused.json()["code"] == "unknown_dev_user"


async def test_dev_issuer_is_off_by_default(tmp_path: Path) -> None:
    from amora_authz import DevIssuerSettings, OidcSettings  # noqa: PLC0415

    settings = dev_settings(
        tmp_path,
        dev_issuer=DevIssuerSettings(enabled=False),
        oidc=OidcSettings(issuer="https://login.example.test", audience="amora"),
    )
    async with serve(settings) as svc:
        response = await svc.http.get("/dev-issuer/jwks")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
        assert svc.runtime.dev_issuer is None


async def test_dev_issuer_refuses_to_run_beside_a_production_issuer(tmp_path: Path) -> None:
    from amora_authz import ConfigError, DevIssuerSettings, OidcSettings  # noqa: PLC0415

    settings = dev_settings(
        tmp_path,
        dev_issuer=DevIssuerSettings(enabled=True),
        oidc=OidcSettings(issuer="https://login.example.test", audience="amora"),
    )
    with pytest.raises(ConfigError, match="beside"):
        async with serve(settings):
            pass


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_token"),
        ({"Authorization": "Basic YWxpY2U6cHc="}, "missing_token"),
        ({"Authorization": "Bearer not-a-jwt"}, "malformed_token"),
        ({"Authorization": "Bearer a.b.c"}, "malformed_token"),
    ],
)
async def test_missing_or_malformed_token_is_401(running: Running, headers: dict[str, str], code: str) -> None:
    response = await running.http.post("/v1/sessions", json=session_body(), headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == code
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_expired_wrong_audience_and_forged_tokens_are_401(running: Running) -> None:
    issuer = running.runtime.dev_issuer
    assert issuer is not None
    expired = issuer.issue("alice", now=time.time() - 7200, ttl_s=600)
    wrong_aud = issuer.issue("alice", audience="another-service")
    good = issuer.issue("alice")
    header, payload, _ = good.split(".")
    forged_payload = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(payload + "==").replace(b'"alice"', b'"admin"')
    ).rstrip(b"=")
    forged = f"{header}.{forged_payload.decode()}.{good.split('.')[2]}"
    for token, code in (
        (expired, "expired_token"),
        (wrong_aud, "invalid_audience"),
        (forged, "bad_signature"),
    ):
        response = await running.http.post(
            "/v1/sessions", json=session_body(), headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, code
        assert response.json()["code"] == code
    metrics = (await running.http.get("/metrics")).text
    assert 'amora_authz_token_rejected_total{code="expired_token"} 1.0' in metrics
    # The same refusals, as session refusals by the code answered.
    refused = {
        (s.labels["operation"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "amora_authz_sessions_refused"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert refused == {("create", code): 1.0 for code in ("expired_token", "invalid_audience", "bad_signature")}


async def test_admin_api_needs_the_admin_role(running: Running) -> None:
    alice = await running.auth("alice")
    for method, url in (
        ("POST", "/v1/admin/devices"),
        ("PUT", "/v1/admin/users/alice/devices/p1"),
        ("DELETE", "/v1/admin/users/alice/devices/p1"),
        ("POST", "/v1/admin/devices/p1/revoke"),
        ("GET", "/v1/admin/devices/p1/users"),
        ("GET", "/v1/admin/users/bob/devices"),
    ):
        body = device_body("p1") if method == "POST" and url.endswith("devices") else None
        response = await running.http.request(method, url, json=body, headers=alice)
        assert response.status_code == 403, url
        assert response.json()["code"] == "not_admin"
    # Users may list their own devices.
    own = await running.http.get("/v1/admin/users/alice/devices", headers=alice)
    assert own.status_code == 200
    assert own.json() == {"user": "alice", "devices": []}


async def test_invalid_input_is_422(running: Running) -> None:
    admin = await running.auth("admin")
    cases = [
        device_body("bad/id"),
        device_body("+"),
        device_body(""),
        device_body("x" * 65),
        {**device_body("ok-1"), "signing_key": b64(b"short")},
        {**device_body("ok-1"), "encryption_key": "%%% not base64"},
        {"device_id": "ok-1"},
        {**device_body("ok-1"), "csr": "-----BEGIN NOTHING-----"},
    ]
    for body in cases:
        response = await running.http.post("/v1/admin/devices", json=body, headers=admin)
        assert response.status_code == 422, body
        assert set(response.json()) <= {"code", "message", "errors"}  # errors: schema failures' field paths
    bad_session = await running.http.post(
        "/v1/sessions", json={"signing_key": "AAAA"}, headers=await running.auth("alice")
    )
    assert bad_session.status_code == 422
    alice = await running.auth("alice")
    for raw in (b"not json", b"[]", b'{"signing_key": 5, "encryption_key": ""}'):
        response = await running.http.post(
            "/v1/sessions", content=raw, headers={**alice, "content-type": "application/json"}
        )
        assert response.status_code == 422, raw
        assert response.json()["code"] == "invalid_input"
    huge = await running.http.post(
        "/v1/sessions", content=b"x" * 100_000, headers={**alice, "content-type": "application/json"}
    )
    assert huge.status_code == 413


async def test_session_lifecycle_with_grant(running: Running) -> None:
    admin = await running.auth("admin")
    alice = await running.auth("alice")
    registered = await running.http.post("/v1/admin/devices", json=device_body("player-1"), headers=admin)
    assert registered.status_code == 201
    assert registered.json() == {"device_id": "player-1", "certificate": None, "serial": None}
    again = await running.http.post("/v1/admin/devices", json=device_body("player-1"), headers=admin)
    assert again.status_code == 409
    assert again.json()["code"] == "device_exists"
    linked = await running.http.put("/v1/admin/users/alice/devices/player-1", headers=admin)
    assert linked.json() == {"user": "alice", "device_id": "player-1", "created": True}

    session_key = SigningKey.generate()
    enc_key = EncryptionKey.generate()
    created = await running.http.post(
        "/v1/sessions",
        json=session_body(session_key, enc_key, client_name="web"),
        headers=alice,
    )
    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    body = created.json()
    assert body["broker"]["username"] == body["session_id"] == body["broker"]["client_id"]
    assert len(body["broker"]["password"]) >= 40
    assert [d["device_id"] for d in body["devices"]] == ["player-1"]

    keys = (await running.http.get("/.well-known/amora-keys")).json()["keys"]
    assert keys == body["authz_keys"]
    trusted = keyring(VerifyKey.from_raw(base64.b64decode(k["public_key"])) for k in keys)
    grant = verify_grant(
        base64.b64decode(body["grant"]),
        trusted,
        now_ms=time.time_ns() // 10**6,
        device_id="player-1",
        right=Right.CONTROL,
    )
    assert grant.subject == "alice"
    assert grant.session_id == body["session_id"]
    assert grant.signing_key == session_key.public_key.raw
    assert grant.encryption_key == enc_key.public_key.raw
    assert grant.expires_at_ms == body["expires_at"]

    # Refresh: later expiry, new grant, same broker credential.
    refreshed = await running.http.post(
        f"/v1/sessions/{body['session_id']}/refresh", headers=await running.auth("alice")
    )
    assert refreshed.status_code == 200
    again_body = refreshed.json()
    assert again_body["broker"] == body["broker"]
    assert again_body["grant"] != body["grant"]
    assert again_body["expires_at"] >= body["expires_at"]

    # Another user can neither refresh nor delete it (it "does not exist" for them).
    bob = await running.auth("bob")
    for response in (
        await running.http.post(f"/v1/sessions/{body['session_id']}/refresh", headers=bob),
        await running.http.delete(f"/v1/sessions/{body['session_id']}", headers=bob),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"

    deleted = await running.http.delete(f"/v1/sessions/{body['session_id']}", headers=alice)
    assert deleted.status_code == 204
    gone = await running.http.post(f"/v1/sessions/{body['session_id']}/refresh", headers=alice)
    assert gone.status_code == 404


async def test_user_without_devices_gets_a_session_that_reaches_nothing(running: Running) -> None:
    response = await running.http.post("/v1/sessions", json=session_body(), headers=await running.auth("carol"))
    assert response.status_code == 201
    body = response.json()
    assert body["devices"] == []
    keys = (await running.http.get("/.well-known/amora-keys")).json()["keys"]
    trusted = keyring(VerifyKey.from_raw(base64.b64decode(k["public_key"])) for k in keys)
    grant = verify_grant(base64.b64decode(body["grant"]), trusted, now_ms=time.time_ns() // 10**6)
    assert grant.devices == ()


async def test_device_keys_links_and_revocation(running: Running) -> None:
    admin = await running.auth("admin")
    body = device_body("player-9")
    assert (await running.http.post("/v1/admin/devices", json=body, headers=admin)).status_code == 201
    await running.http.put("/v1/admin/users/alice/devices/player-9", headers=admin)
    await running.http.put("/v1/admin/users/bob/devices/player-9", headers=admin)
    users = await running.http.get("/v1/admin/devices/player-9/users", headers=admin)
    assert users.json() == {"device_id": "player-9", "users": ["alice", "bob"]}
    listed = await running.http.get("/v1/admin/users/alice/devices", headers=admin)
    assert listed.json() == {"user": "alice", "devices": ["player-9"]}

    keys = await running.http.get("/v1/devices/player-9/keys", headers=await running.auth("alice"))
    assert keys.status_code == 200
    assert keys.json()["signing_key"] == body["signing_key"]
    carol = await running.http.get("/v1/devices/player-9/keys", headers=await running.auth("carol"))
    assert carol.status_code == 404

    unlinked = await running.http.delete("/v1/admin/users/bob/devices/player-9", headers=admin)
    assert unlinked.status_code == 204
    twice = await running.http.delete("/v1/admin/users/bob/devices/player-9", headers=admin)
    assert twice.status_code == 404
    bob_keys = await running.http.get("/v1/devices/player-9/keys", headers=await running.auth("bob"))
    assert bob_keys.status_code == 404

    revoked = await running.http.post("/v1/admin/devices/player-9/revoke", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json() == {"device_id": "player-9", "revoked_serials": []}
    assert (await running.http.post("/v1/admin/devices/player-9/revoke", headers=admin)).status_code == 409
    assert (await running.http.post("/v1/admin/devices/nope/revoke", headers=admin)).status_code == 404
    relink = await running.http.put("/v1/admin/users/alice/devices/player-9", headers=admin)
    assert relink.status_code == 409
    alice_keys = await running.http.get("/v1/devices/player-9/keys", headers=await running.auth("alice"))
    assert alice_keys.status_code == 404
    session = await running.http.post("/v1/sessions", json=session_body(), headers=await running.auth("alice"))
    assert session.json()["devices"] == []


def make_ca(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Device CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "ca.pem", folder / "ca.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)  # the service refuses a CA key others may read
    return cert_file, key_file


def make_csr(common_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def test_csr_is_answered_and_revocation_lands_in_the_crl(tmp_path: Path) -> None:
    ca_cert, ca_key = make_ca(tmp_path)
    crl_file = tmp_path / "crl.pem"
    written: list[int] = []
    settings = dev_settings(
        tmp_path,
        device_ca_cert=str(ca_cert),
        device_ca_key=str(ca_key),
        crl_file=str(crl_file),
    )
    async with serve(settings, on_crl_written=lambda revoked: written.append(len(revoked))) as svc:
        assert crl_file.exists()  # written at start-up
        admin = await svc.auth("admin")
        # The CSR asks for another device's name: the CN is set by the service anyway.
        response = await svc.http.post(
            "/v1/admin/devices", json=device_body("player-7", csr=make_csr("player-1")), headers=admin
        )
        assert response.status_code == 201
        cert = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "player-7"
        assert str(cert.serial_number) == response.json()["serial"]
        ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        cert.verify_directly_issued_by(ca)

        before = len(written)
        revoked = await svc.http.post("/v1/admin/devices/player-7/revoke", headers=admin)
        assert revoked.json()["revoked_serials"] == [str(cert.serial_number)]
        assert len(written) == before + 1
        crl = x509.load_pem_x509_crl(crl_file.read_bytes())
        assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


async def test_operations_endpoints(running: Running) -> None:
    assert (await running.http.get("/healthz")).json() == {"status": "ok"}
    # This service manages no brokers: not ready (sessions would reach nothing).
    for path in ("/readyz", "/readyz/serving"):
        ready = await running.http.get(path)
        assert ready.status_code == 503, path
        assert ready.json()["code"] == "no_brokers"
    schema = (await running.http.get("/schema/openapi.json")).json()
    assert "/v1/sessions" in schema["paths"]
    assert "/v1/admin/devices" in schema["paths"]
    missing = await running.http.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


async def test_a_user_holds_a_bounded_number_of_sessions(tmp_path: Path) -> None:
    async with serve(dev_settings(tmp_path, max_sessions_per_user=2)) as svc:
        alice = await svc.auth("alice")
        ticks = iter(range(time.time_ns() // 10**6, time.time_ns() // 10**6 + 10**6, 1000))
        svc.runtime.service._clock_ms = lambda: next(ticks)  # a second between requests
        ids = []
        for _ in range(3):
            response = await svc.http.post("/v1/sessions", json=session_body(), headers=alice)
            ids.append(response.json()["session_id"])
        oldest = await svc.http.post(f"/v1/sessions/{ids[0]}/refresh", headers=alice)
        assert oldest.status_code == 404
        for session_id in ids[1:]:
            kept = await svc.http.post(f"/v1/sessions/{session_id}/refresh", headers=alice)
            assert kept.status_code == 200


async def test_the_service_runs_on_postgresql(tmp_path: Path, postgres_dsn: str) -> None:
    async with serve(dev_settings(tmp_path, database_url=postgres_dsn)) as svc:
        admin = await svc.auth("admin")
        assert (await svc.http.post("/v1/admin/devices", json=device_body("pg-1"), headers=admin)).status_code == 201
        await svc.http.put("/v1/admin/users/alice/devices/pg-1", headers=admin)
        session = await svc.http.post("/v1/sessions", json=session_body(), headers=await svc.auth("alice"))
        assert [d["device_id"] for d in session.json()["devices"]] == ["pg-1"]
        revoked = await svc.http.post("/v1/admin/devices/pg-1/revoke", headers=admin)
        assert revoked.status_code == 200
        assert await svc.runtime.store.users_of_device("pg-1") == []


async def test_the_grant_lets_the_session_command_its_device_and_no_other(running: Running) -> None:
    admin = await running.auth("admin")
    for device_id in ("player-x", "player-y"):
        assert (
            await running.http.post("/v1/admin/devices", json=device_body(device_id), headers=admin)
        ).status_code == 201
    await running.http.put("/v1/admin/users/alice/devices/player-x", headers=admin)
    session_key = SigningKey.generate()
    body = (
        await running.http.post("/v1/sessions", json=session_body(session_key), headers=await running.auth("alice"))
    ).json()
    keys = (await running.http.get("/.well-known/amora-keys")).json()["keys"]
    trusted = keyring(VerifyKey.from_raw(base64.b64decode(k["public_key"])) for k in keys)
    grant = base64.b64decode(body["grant"])
    sender = Sender(body["session_id"], session_key, epoch=1)
    now = time.time_ns() // 10**6
    command = Command(id="cmd-1", issued_at_ms=now, expires_at_ms=now + 30_000, action=Play())

    payload = sender.encode(commands_topic("player-x"), command, now_ms=now, grant=grant)
    verified = verify_command(
        payload, topic=commands_topic("player-x"), content_type=Codec.MSGPACK, trusted_keys=trusted, now_ms=now
    )
    assert verified.command == command
    assert verified.grant.subject == "alice"

    other = sender.encode(commands_topic("player-y"), command, now_ms=now, grant=grant)
    with pytest.raises(Unauthorized):
        verify_command(
            other, topic=commands_topic("player-y"), content_type=Codec.MSGPACK, trusted_keys=trusted, now_ms=now
        )
    # A stolen grant is useless without the session's key.
    thief = Sender(body["session_id"], SigningKey.generate(), epoch=2)
    stolen = thief.encode(commands_topic("player-x"), command, now_ms=now, grant=grant)
    with pytest.raises(UnknownKey):
        verify_command(
            stolen, topic=commands_topic("player-x"), content_type=Codec.MSGPACK, trusted_keys=trusted, now_ms=now
        )


async def test_key_rotation_publishes_every_key_and_signs_with_the_first(tmp_path: Path) -> None:
    new, old = SigningKey.generate(), SigningKey.generate()
    files = []
    for name, key in (("new.pem", new), ("old.pem", old)):
        (tmp_path / name).write_bytes(key.to_pem())
        (tmp_path / name).chmod(0o600)  # the service refuses keys others may read
        files.append(str(tmp_path / name))
    async with serve(dev_settings(tmp_path, signing_key_files=tuple(files))) as svc:
        keys = (await svc.http.get("/.well-known/amora-keys")).json()["keys"]
        assert [k["kid"] for k in keys] == [new.kid, old.kid]
        body = (await svc.http.post("/v1/sessions", json=session_body(), headers=await svc.auth("alice"))).json()
        grant = base64.b64decode(body["grant"])
        now = time.time_ns() // 10**6
        assert verify_grant(grant, keyring([new.public_key]), now_ms=now).subject == "alice"
        with pytest.raises(UnknownKey):
            verify_grant(grant, keyring([old.public_key]), now_ms=now)
