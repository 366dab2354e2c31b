"""Security suite: reserved identities (issue #11 item 1) on the real stack.

Device ids, user ids, session accounts and service accounts live in disjoint
namespaces: service accounts (the stack's own harness admin and bridge, authz's dynsec
admin in the example configuration) carry the reserved ``svc.`` prefix that no device
or user id can take, registering or linking a reserved name is refused with 422, and
the reconciler never adopts, changes or deletes a broker object it did not create,
whatever its name.
"""

from __future__ import annotations

import base64
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from amora_devtools.broker import dynsec
from amora_devtools.stack import Stack
from amora_protocol import (
    SERVICE_ACCOUNT_PREFIX,
    EncryptionKey,
    SigningKey,
    is_reserved_account_name,
    service_account_name,
)

ROOT = Path(__file__).resolve().parents[1]


def _device_body(device_id: str) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "signing_key": base64.b64encode(SigningKey.generate().public_key.raw).decode(),
        "encryption_key": base64.b64encode(EncryptionKey.generate().public_key.raw).decode(),
    }


def _client(stack: Stack, broker: int, username: str) -> dict[str, Any] | None:
    response = dynsec(stack.brokers[broker], [{"command": "getClient", "username": username}], check=False)[0]
    return None if response.get("error") else response["data"]["client"]


def test_every_service_account_of_the_stack_is_reserved(security_stack: Stack) -> None:
    for broker in security_stack.brokers:
        assert is_reserved_account_name(broker.admin_username), broker.admin_username
    # The standby's bridge logs in to the primary with a reserved name too.
    bridge = _client(security_stack, 0, service_account_name("bridge-standby"))
    assert bridge is not None
    # The shipped example configuration gives authz's own dynsec account a reserved name.
    example = tomllib.loads((ROOT / "infra/authz/authz.example.toml").read_text())
    assert all(is_reserved_account_name(b["username"]) for b in example["brokers"])


@pytest.mark.parametrize(
    "device_id",
    [
        service_account_name("harness-admin"),  # the stack's dynsec admin
        service_account_name("bridge-standby"),  # the standby's bridge account
        service_account_name("amora-authz"),  # authz's account in the example configuration
        SERVICE_ACCOUNT_PREFIX + "anything",
        "sess." + "0" * 32,  # the session namespace
    ],
)
def test_registering_a_reserved_device_id_is_refused(security_stack: Stack, authz_http: Any, device_id: str) -> None:
    with authz_http(security_stack, "admin") as http:
        response = http.post("/v1/admin/devices", json=_device_body(device_id))
    assert response.status_code == 422
    assert response.json()["code"] == "reserved_name"
    # Nothing reached the broker: the service account is as it was.
    if device_id == service_account_name("bridge-standby"):
        bridge = _client(security_stack, 0, device_id)
        assert bridge is not None
        assert [r["rolename"] for r in bridge["roles"]] == ["bridge:standby"]


@pytest.mark.parametrize(
    ("user", "code"),
    [
        (service_account_name("amora-authz"), "reserved_name"),
        ("sess.0123", "reserved_name"),
        ("#", "invalid_user_id"),
        ("+", "invalid_user_id"),
        ('al"ice', "invalid_user_id"),
        ("alice bob", "invalid_user_id"),
        ("x" * 65, "invalid_user_id"),
    ],
)
def test_linking_a_reserved_or_malformed_user_id_is_refused(
    security_stack: Stack, authz_http: Any, user: str, code: str
) -> None:
    with authz_http(security_stack, "admin") as http:
        response = http.put(f"/v1/admin/users/{quote(user, safe='')}/devices/player-1")
        groups = dynsec(security_stack.brokers[0], [{"command": "listGroups", "count": -1}])[0]["data"]["groups"]
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert f"user:{user}" not in groups


@pytest.mark.parametrize(("device_id", "code"), [("svc.harness-admin", "reserved_name"), ("#", "invalid_device_id")])
def test_revoke_validates_its_id(security_stack: Stack, authz_http: Any, device_id: str, code: str) -> None:
    with authz_http(security_stack, "admin") as http:
        response = http.post(f"/v1/admin/devices/{quote(device_id, safe='')}/revoke")
    assert response.status_code == 422
    assert response.json()["code"] == code


def test_a_foreign_account_with_a_device_like_name_is_never_taken_over(security_stack: Stack, authz_http: Any) -> None:
    """An operator's account outside the reserved prefix: registration is refused, the account untouched."""
    primary = security_stack.brokers[0]
    dynsec(
        primary,
        [
            {"command": "createRole", "rolename": "legacy-tool", "acls": []},
            {
                "command": "createClient",
                "username": "legacy-tool",
                "password": "not-a-device",
                "textname": "an operator's tool from before the reserved prefix",
                "roles": [{"rolename": "legacy-tool"}],
            },
        ],
    )
    try:
        with authz_http(security_stack, "admin") as http:
            response = http.post("/v1/admin/devices", json=_device_body("legacy-tool"))
            assert response.status_code == 409
            assert response.json()["code"] == "name_taken_on_broker"
            assert "client:legacy-tool" in response.json()["message"]
            # Nothing was recorded either: the id is still free in the database.
            assert http.get("/v1/admin/devices/legacy-tool/users").status_code == 404
        client = _client(security_stack, 0, "legacy-tool")
        assert client is not None
        assert [r["rolename"] for r in client["roles"]] == ["legacy-tool"]
        assert client.get("textname") == "an operator's tool from before the reserved prefix"
    finally:
        dynsec(
            primary,
            [
                {"command": "deleteClient", "username": "legacy-tool"},
                {"command": "deleteRole", "rolename": "legacy-tool"},
            ],
        )


def test_revocation_never_deletes_a_foreign_account_of_the_same_name(security_stack: Stack, authz_http: Any) -> None:
    """A foreign account takes a device's name after registration: revoking the device spares it."""
    primary = security_stack.brokers[0]
    with authz_http(security_stack, "admin") as http:
        assert http.post("/v1/admin/devices", json=_device_body("late-clash")).status_code == 201
        # The device's own client is replaced by a foreign one of the same name.
        dynsec(
            primary,
            [
                {"command": "deleteClient", "username": "late-clash"},
                {"command": "createClient", "username": "late-clash", "textname": "operator", "roles": []},
            ],
        )
        try:
            response = http.post("/v1/admin/devices/late-clash/revoke")
            assert response.status_code == 200, response.text
            client = _client(security_stack, 0, "late-clash")
            assert client is not None, "the reconciler deleted an account it does not own"
            assert client.get("textname") == "operator"
        finally:
            dynsec(primary, [{"command": "deleteClient", "username": "late-clash"}])
