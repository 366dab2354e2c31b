"""Security suite: forged and mis-addressed user tokens against the stack's authz service.

Each token is refused with 401 and the specific ``code`` (and a ``WWW-Authenticate``
header naming it): ``alg=none``, HMAC key confusion (HS256 keyed with the issuer's RSA
public key), a forged payload, an unknown key id, and validly signed tokens with the
wrong issuer, the wrong audience, an expiry in the past or a start in the future.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import RSAKey

from amora_authz.testing import session_body
from amora_devtools.stack import Stack


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def _issuer_key(stack: Stack) -> RSAKey:
    """The stack's development issuer key: tokens with a valid signature and chosen claims."""
    return RSAKey.import_key(json.loads((stack.state_dir / "authz" / "dev-issuer-key.json").read_text()))


def _claims(stack: Stack, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": f"{stack.authz_url}/dev-issuer",
        "sub": "admin",
        "aud": "amora-dev",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "roles": ["amora-admin"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(stack: Stack, **overrides: Any) -> str:
    key = _issuer_key(stack)
    return jwt.encode({"alg": "RS256", "kid": key.kid}, _claims(stack, **overrides), key)


def _alg_none(stack: Stack) -> str:
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(_claims(stack))}."


def _key_confusion(stack: Stack) -> str:
    """HS256 with the issuer's public key (PEM) as the HMAC secret: the classic confusion."""
    public_pem = _issuer_key(stack).public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        f"{_segment({'alg': 'HS256', 'typ': 'JWT', 'kid': _issuer_key(stack).kid})}.{_segment(_claims(stack))}"
    )
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


def _forged_payload(stack: Stack) -> str:
    """A genuine carol token whose payload is swapped for an admin's: the signature no longer matches."""
    genuine = httpx.post(f"{stack.authz_url}/dev-issuer/token", json={"username": "carol"}, timeout=10).json()
    header, _, signature = genuine["access_token"].split(".")
    return f"{header}.{_segment(_claims(stack))}.{signature}"


def _unknown_kid(stack: Stack) -> str:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "not-the-issuers"})
    return jwt.encode({"alg": "RS256", "kid": "not-the-issuers"}, _claims(stack), stranger)


CASES: dict[str, tuple[Any, str | None]] = {
    "alg=none": (_alg_none, "unsupported_algorithm"),
    "hs256 key confusion": (_key_confusion, "unsupported_algorithm"),
    "forged payload": (_forged_payload, "bad_signature"),
    "unknown kid": (_unknown_kid, "unknown_key"),
    "wrong issuer": (lambda s: _signed(s, iss="https://evil.example/dev-issuer"), "invalid_issuer"),
    "wrong audience": (lambda s: _signed(s, aud="another-service"), "invalid_audience"),
    "expired": (
        lambda s: _signed(s, iat=int(time.time()) - 7200, nbf=None, exp=int(time.time()) - 3600),
        "expired_token",
    ),
    "not yet valid": (lambda s: _signed(s, nbf=int(time.time()) + 3600), "token_not_yet_valid"),
    "no exp": (lambda s: _signed(s, exp=None), "invalid_claims"),
    "no sub": (lambda s: _signed(s, sub=None), "invalid_claims"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_token_is_refused_with_its_code(security_stack: Stack, case: str) -> None:
    make, code = CASES[case]
    assert code is not None
    token = make(security_stack)
    with httpx.Client(base_url=security_stack.authz_url, timeout=30) as http:
        for method, path, body in (
            ("POST", "/v1/sessions", session_body()),
            ("POST", "/v1/admin/devices/player-1/revoke", None),  # the admin door too
        ):
            response = http.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, (case, path, response.text)
            assert response.json()["code"] == code, (case, response.json())
            assert f'error="{code}"' in response.headers["WWW-Authenticate"]
        # And the positive control: a genuine admin token passes validation.
        genuine = _signed(security_stack)
        listed = http.get("/v1/admin/devices/player-1/users", headers={"Authorization": f"Bearer {genuine}"})
        assert listed.status_code == 200
