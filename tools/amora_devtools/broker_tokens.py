"""Broker tokens made and read by hand, for tests that check what the broker accepts.

The authz service makes the real ones (token mode, ``docs/decisions/0015-stateless-broker-tokens.md``);
these helpers sign arbitrary claims with a key (the service's own, or a stranger's), so a
test can present a token that is expired, forged or for another name and see the broker
refuse it, and a smoke test can log in to a broker image without running the service.
Compact JWS, ES256 with a raw ``r || s`` signature, as the broker's ``amora_auth`` plugin
reads them (``infra/broker-plugin/README.md``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from amora_devtools._errors import DevtoolsError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["b64url", "load_token_key", "session_token", "sign_token", "token_parts", "unb64url"]


def b64url(raw: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """The bytes of unpadded base64url."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A token's header and claims (decoded, not verified) and its signature part."""
    header, claims, signature = token.split(".")
    return json.loads(unb64url(header)), json.loads(unb64url(claims)), signature


def load_token_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An EC private key from a PEM file (``amora-authz broker-token-key generate``).

    Raises:
        DevtoolsError: The file holds no EC private key.
    """
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DevtoolsError(f"{path} holds no EC private key")
    return key


def sign_token(header: dict[str, Any], claims: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> str:
    """A compact JWS over ``header`` and ``claims``, signed ES256 with ``key``."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def session_token(  # noqa: PLR0913 - the claims, all keyword-only
    key: ec.EllipticCurvePrivateKey,
    *,
    username: str,
    acl: list[dict[str, str]],
    subject: str = "smoke",
    lifetime_s: int = 300,
    issuer: str = "amora-authz",
    audience: str = "amora-broker",
) -> str:
    """A token as the service makes one for a session (client id = username), kid from ``key``."""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "username": username,
        "clientid": username,
        "iat": now,
        "exp": now + lifetime_s,
        "acl": acl,
    }
    header = {"alg": "ES256", "typ": "JWT", "kid": b64url(hashlib.sha256(der).digest()[:16])}
    return sign_token(header, claims, key)
