"""Security suite: hostile input and floods at the stack's authz service (issue #11 items 6, 7).

Deeply nested JSON, degenerate session keys and a login flood, each answered with its
specific refusal: ``422 invalid_input``, ``422 invalid_key``, ``429 rate_limited`` with
``Retry-After``; and the service keeps answering normally afterwards.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from amora_authz.testing import session_body
from amora_devtools.stack import Stack

ZERO = base64.b64encode(bytes(32)).decode()
# The identity point of Ed25519 and a point of order 8 on Curve25519 (RFC 7748 section 7).
ED25519_IDENTITY = base64.b64encode(bytes([1]) + bytes(31)).decode()
X25519_ORDER_8 = base64.b64encode(
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
).decode()


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"signing_key": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
        b'{"a":' * 3_000 + b"1" + b"}" * 3_000,
    ],
)
def test_deeply_nested_json_is_422(security_stack: Stack, authz_http: Any, body: bytes) -> None:
    with authz_http(security_stack, "alice") as http:
        response = http.post("/v1/sessions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_input"
        assert "nests deeper" in response.json()["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("signing_key", ZERO),
        ("signing_key", ED25519_IDENTITY),
        ("encryption_key", ZERO),
        ("encryption_key", X25519_ORDER_8),
    ],
)
def test_degenerate_session_keys_are_422(security_stack: Stack, authz_http: Any, field: str, value: str) -> None:
    with authz_http(security_stack, "alice") as http:
        response = http.post("/v1/sessions", json=session_body() | {field: value})
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_key"
        assert field in response.json()["message"]


def test_a_login_flood_is_rate_limited_per_user(security_stack: Stack, authz_http: Any) -> None:
    """The stack runs the service's default limits: 20 session creations at once per user, 1/s after."""
    with authz_http(security_stack, "mallory") as mallory, authz_http(security_stack, "bob") as bob:
        statuses = []
        for _ in range(60):  # bounded: far more than 20 at once plus the refill meanwhile
            response = mallory.post("/v1/sessions", json=session_body())
            statuses.append(response.status_code)
            if response.status_code != 201:
                break
        assert statuses[:20] == [201] * 20
        assert response.status_code == 429, statuses
        assert response.json()["code"] == "rate_limited"
        assert int(response.headers["Retry-After"]) >= 1
        # Other users are unaffected.
        assert bob.post("/v1/sessions", json=session_body()).status_code == 201
        metrics = bob.get("/metrics").text
        assert 'amora_authz_rate_limited_total{limit="sessions_per_user"}' in metrics
