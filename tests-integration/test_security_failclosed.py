"""Security suite: fail closed with a broker stopped (issue #11 item 3), on the real stack.

An access change that has not reached every configured broker is not reported done:
unlink, logout and revocation answer 503 ``change_pending`` (naming the brokers behind,
with ``Retry-After``), ``/readyz`` is not ready meanwhile, the service retries in the
background, and repeating the request answers its normal success once every broker
holds the change. A session is handed out only once its credential exists on the
primary.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from amora_authz.testing import session_body
from amora_devtools.broker import dynsec
from amora_devtools.stack import Stack

WAIT_S = 20.0


def _wait_ready(stack: Stack) -> httpx.Response:
    """Poll ``/readyz`` (bounded) until the service says every broker caught up."""
    deadline = time.monotonic() + WAIT_S
    while True:
        response = httpx.get(f"{stack.authz_url}/readyz", timeout=5)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def _group_roles(stack: Stack, broker: int, user: str) -> set[str]:
    answer = dynsec(stack.brokers[broker], [{"command": "getGroup", "groupname": f"user:{user}"}], check=False)[0]
    return set() if answer.get("error") else {r["rolename"] for r in answer["data"]["group"]["roles"]}


def _has_client(stack: Stack, broker: int, username: str) -> bool:
    answer = dynsec(stack.brokers[broker], [{"command": "getClient", "username": username}], check=False)[0]
    return not answer.get("error")


def _register_with_csr(admin: httpx.Client, device_id: str) -> str:
    """Register a device with a CSR; return its certificate's serial."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    body = session_body() | {"device_id": device_id, "csr": csr}
    response = admin.post("/v1/admin/devices", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["serial"])


def test_access_removal_is_not_reported_done_while_a_broker_is_behind(
    security_stack: Stack, authz_http: Any, new_session: Any
) -> None:
    stack = security_stack
    standby = stack.brokers[1]
    session = new_session(stack, "alice")
    with authz_http(stack, "admin") as admin, authz_http(stack, "alice") as alice:
        serial = _register_with_csr(admin, "fc-doomed")
        standby.stop()
        try:
            unlink = admin.delete("/v1/admin/users/alice/devices/player-2")
            logout = alice.delete(f"/v1/sessions/{session['session_id']}")
            revoke = admin.post("/v1/admin/devices/fc-doomed/revoke")
            for response in (unlink, logout, revoke):
                assert response.status_code == 503, response.text
                assert response.json()["code"] == "change_pending"
                assert response.json()["brokers"] == ["standby"]
                assert int(response.headers["Retry-After"]) >= 1
            ready = httpx.get(f"{stack.authz_url}/readyz", timeout=5)
            assert ready.status_code == 503
            assert ready.json()["code"] == "brokers_behind"
            assert ready.json()["brokers"]["standby"]["behind"] is True
            # The primary already holds every change.
            assert "user-device:player-2" not in _group_roles(stack, 0, "alice")
            assert not _has_client(stack, 0, session["session_id"])
            assert not _has_client(stack, 0, "fc-doomed")
            # Repeating a pending change answers the same, not a misleading 404/409.
            again = admin.delete("/v1/admin/users/alice/devices/player-2")
            assert (again.status_code, again.json()["code"]) == (503, "change_pending")
        finally:
            standby.restart()
        # The background retry brings the standby up to date; then readiness returns...
        assert _wait_ready(stack).status_code == 200
        assert "user-device:player-2" not in _group_roles(stack, 1, "alice")
        assert not _has_client(stack, 1, session["session_id"])
        assert not _has_client(stack, 1, "fc-doomed")
        # ...and each repeated request gets its normal success.
        assert admin.delete("/v1/admin/users/alice/devices/player-2").status_code == 204
        assert alice.delete(f"/v1/sessions/{session['session_id']}").status_code == 204
        repeated = admin.post("/v1/admin/devices/fc-doomed/revoke")
        assert repeated.status_code == 200
        assert repeated.json() == {"device_id": "fc-doomed", "revoked_serials": [serial]}
        # Once settled, the repeat is an ordinary request again.
        assert admin.post("/v1/admin/devices/fc-doomed/revoke").json()["code"] == "device_revoked"
        # Leave the stack as it was for the rest of the suite.
        assert admin.put("/v1/admin/users/alice/devices/player-2").status_code == 201  # made again


def test_no_session_is_handed_out_without_the_primary(security_stack: Stack, authz_http: Any) -> None:
    stack = security_stack
    primary = stack.brokers[0]
    with authz_http(stack, "carol") as carol:
        primary.stop()
        try:
            response = carol.post("/v1/sessions", json=session_body())
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "broker_unavailable"
            assert int(response.headers["Retry-After"]) >= 1
            assert "session_id" not in response.json()
        finally:
            primary.restart()
        assert _wait_ready(stack).status_code == 200
        created = carol.post("/v1/sessions", json=session_body())
        assert created.status_code == 201
        assert _has_client(stack, 0, created.json()["session_id"])
