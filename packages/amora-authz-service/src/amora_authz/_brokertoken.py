"""Broker tokens: a session's MQTT password as a short-lived ES256 JWT that carries its ACL.

In token mode (``[broker] credentials = "token"``) a session is not a dynamic-security client:
the broker's ``amora_auth`` plugin (``infra/broker-plugin``) checks the token at CONNECT
and enforces the ``acl`` claim, so a login writes nothing to the broker (issue #15,
``docs/decisions/0013-logins-resume-and-reconcile-cost.md`` option b). The format is the
contract in the plugin's README: compact JWS, header ``{"alg": "ES256", "typ": "JWT", "kid"}``,
claims ``iss``, ``aud``, ``sub``, ``username``, ``clientid``, ``iat``, ``exp``, ``acl`` (EMQX's
"new format" rules, first match decides).

Signing uses `cryptography` directly (one ECDSA signature and a JSON encoding per login);
the tests decode every token with joserfc, an independent implementation.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Final

import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from amora_authz._errors import ConfigError, InvalidInputError
from amora_authz._keyfiles import read_private
from amora_protocol import user_device_acls

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

__all__ = [
    "MAX_ACL_RULES",
    "AclRule",
    "BrokerTokenClaims",
    "BrokerTokenKey",
    "generate_private_pem",
    "key_id",
    "load_private_key",
    "public_pem",
    "token_acl",
]

MAX_ACL_RULES: Final = 256
"""Rules the plugin accepts in one token (4 per device: 64 linked devices)."""
_COORDINATE_BYTES: Final = 32  # P-256: r and s are 32 bytes each in a JWS signature
# dynsec ACL types of `amora_protocol.user_device_acls` -> the token's actions. Receiving is
# decided by the subscribe rules in the plugin (as EMQX does), and unsubscribing is always
# allowed there (dynsec's default here too), so those types need no rule of their own.
_ACTIONS: Final = {
    "subscribePattern": "subscribe",
    "subscribeLiteral": "subscribe",
    "publishClientSend": "publish",
}
_IGNORED: Final = frozenset({"publishClientReceive", "unsubscribePattern", "unsubscribeLiteral"})


class AclRule(msgspec.Struct, frozen=True):
    """One rule of the ``acl`` claim (EMQX 5.5's "new format" subset the plugin reads)."""

    permission: str
    action: str
    topic: str


class BrokerTokenClaims(msgspec.Struct, frozen=True, kw_only=True):
    """The claims of a broker token, in the order they are written."""

    iss: str
    aud: str
    sub: str
    username: str
    clientid: str
    iat: int
    exp: int
    acl: tuple[AclRule, ...]


class _Header(msgspec.Struct, frozen=True):
    alg: str
    typ: str
    kid: str


_encoder = msgspec.json.Encoder()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def token_acl(devices: Iterable[str]) -> tuple[AclRule, ...]:
    """The ``acl`` claim for a session of a user linked to ``devices``.

    Built from `amora_protocol.user_device_acls`, the same topics the dynsec role
    ``user-device:{id}`` grants: subscribe to each device's state, connection and responses,
    publish to its commands. No rule matches anything else, so the plugin denies it.

    Raises:
        InvalidInputError: the user has more devices than one token can carry.
    """
    rules: list[AclRule] = []
    for device_id in sorted(set(devices)):
        for acl in user_device_acls(device_id):
            if acl.acltype in _IGNORED:
                continue
            action = _ACTIONS[acl.acltype]  # a new kind of rule must be mapped here, not dropped
            rules.append(AclRule("allow" if acl.allow else "deny", action, acl.topic))
    if len(rules) > MAX_ACL_RULES:
        raise InvalidInputError(
            f"the user is linked to {len(set(devices))} devices, more than one broker token can carry "
            f"({MAX_ACL_RULES} rules, {MAX_ACL_RULES // 4} devices); unlink some, or run the service "
            'with [broker] credentials = "dynsec"',
            code="too_many_devices",
        )
    return tuple(rules)


class BrokerTokenKey:
    """The EC P-256 key that signs broker tokens, with its key id.

    The key id is base64url (no padding) of the first 16 bytes of SHA-256 over the public
    key's DER SubjectPublicKeyInfo: the plugin computes the same from the public keys it
    loads, so several keys (a rotation) need no configured names.
    """

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, *, issuer: str, audience: str) -> None:
        """Wrap a P-256 key.

        Raises:
            ConfigError: the key is on another curve.
        """
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ConfigError(f"broker token keys must be EC P-256 (secp256r1), not {private_key.curve.name}")
        self._key = private_key
        self.issuer = issuer
        self.audience = audience
        self.kid = key_id(private_key.public_key())
        self._header = _b64(_encoder.encode(_Header(alg="ES256", typ="JWT", kid=self.kid)))

    @classmethod
    def load(cls, path: Path, *, issuer: str, audience: str) -> BrokerTokenKey:
        """Load the private key PEM at ``path`` (refused when group or others may read it).

        Raises:
            ConfigError: the file is accessible by others, unreadable, not a PEM private key,
                or not EC P-256; the message names the file and the fix.
        """
        key = load_private_key(read_private(path, "broker token key"), path)
        return cls(key, issuer=issuer, audience=audience)

    def public_pem(self) -> bytes:
        """The public key as the plugin loads it (PEM SubjectPublicKeyInfo)."""
        return public_pem(self._key)

    def issue(  # noqa: PLR0913 - the claims of one token, all keyword-only
        self,
        *,
        subject: str,
        username: str,
        client_id: str,
        devices: Iterable[str],
        issued_at_s: int,
        expires_at_s: int,
    ) -> str:
        """Sign a token for one session.

        Args:
            subject: the user (``sub``).
            username: the MQTT username the token is for.
            client_id: the only MQTT client id it may connect with.
            devices: the user's active devices (their topics become the ``acl``).
            issued_at_s: ``iat``, unix seconds.
            expires_at_s: ``exp``, unix seconds (the session's expiry).

        Returns:
            The compact JWS.

        Raises:
            InvalidInputError: more devices than one token can carry.
        """
        claims = BrokerTokenClaims(
            iss=self.issuer,
            aud=self.audience,
            sub=subject,
            username=username,
            clientid=client_id,
            iat=issued_at_s,
            exp=expires_at_s,
            acl=token_acl(devices),
        )
        signing_input = f"{self._header}.{_b64(_encoder.encode(claims))}"
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")
        return f"{signing_input}.{_b64(signature)}"


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key id of a public key (see `BrokerTokenKey`)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _b64(hashlib.sha256(der).digest()[:16])


def generate_private_pem() -> bytes:
    """A new P-256 private key as PKCS#8 PEM (unencrypted: protect the file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(pem: bytes, path: Path) -> ec.EllipticCurvePrivateKey:
    """Parse a P-256 private key PEM read from ``path``.

    Raises:
        ConfigError: not a PEM private key, encrypted, or not EC P-256 (the message names the fix).
    """
    fix = f"make one with `amora-authz broker-token-key generate --out {path}`"
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"the broker token key {path} is not an unencrypted PEM private key ({exc}): {fix}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"the broker token key {path} is not an EC P-256 key: {fix}")
    return key


def public_pem(private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """The PEM SubjectPublicKeyInfo of ``private_key``."""
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
