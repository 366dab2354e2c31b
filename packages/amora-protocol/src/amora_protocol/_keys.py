r"""Key material: Ed25519 signing keys and X25519 encryption keys, with stable key ids.

Key ids are ``base64url(SHA-256(b"amora-kid-v1\\x00" || raw public key)[:16])`` without
padding (22 characters): stable for a key, independent of how it is serialised.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from amora_protocol._errors import SchemaError

__all__ = [
    "EncryptionKey",
    "EncryptionPublicKey",
    "SigningKey",
    "VerifyKey",
    "key_id",
]

_KID_PREFIX: Final = b"amora-kid-v1\x00"
RAW_KEY_SIZE: Final = 32


def key_id(raw_public_key: bytes) -> str:
    """Return the stable id of a raw 32-byte public key."""
    digest = hashlib.sha256(_KID_PREFIX + raw_public_key).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_raw(raw: bytes, what: str) -> bytes:
    if not isinstance(raw, bytes | bytearray) or len(raw) != RAW_KEY_SIZE:
        raise SchemaError(f"{what} must be {RAW_KEY_SIZE} raw bytes")
    return bytes(raw)


_Private = Ed25519PrivateKey | X25519PrivateKey
_Public = Ed25519PublicKey | X25519PublicKey
_PrivateT = TypeVar("_PrivateT", Ed25519PrivateKey, X25519PrivateKey)
_PublicT = TypeVar("_PublicT", Ed25519PublicKey, X25519PublicKey)


def _load_private_pem(pem: bytes, password: bytes | None, kind: type[_PrivateT], name: str) -> _PrivateT:
    try:
        key = serialization.load_pem_private_key(pem, password)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"not a usable PEM private key: {exc}") from exc
    if not isinstance(key, kind):
        raise SchemaError(f"the PEM holds a private key that is not {name}")
    return key


def _load_public_pem(pem: bytes, kind: type[_PublicT], name: str) -> _PublicT:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SchemaError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, kind):
        raise SchemaError(f"the PEM holds a public key that is not {name}")
    return key


def _public_raw(key: _Public) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _public_pem(key: _Public) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _private_raw(key: _Private) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _private_pem(key: _Private, password: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


class VerifyKey:
    """An Ed25519 public key that verifies envelopes and grants."""

    __slots__ = ("_key", "kid", "raw")

    def __init__(self, key: Ed25519PublicKey) -> None:
        """Wrap a cryptography public key."""
        self._key = key
        self.raw: bytes = _public_raw(key)
        self.kid: str = key_id(self.raw)

    @classmethod
    def from_raw(cls, raw: bytes) -> VerifyKey:
        """Load from the 32 raw bytes.

        Raises:
            SchemaError: Not 32 bytes.
        """
        return cls(Ed25519PublicKey.from_public_bytes(_check_raw(raw, "an Ed25519 public key")))

    @classmethod
    def from_pem(cls, pem: bytes) -> VerifyKey:
        """Load from a SubjectPublicKeyInfo PEM.

        Raises:
            SchemaError: Not an Ed25519 public key PEM.
        """
        return cls(_load_public_pem(pem, Ed25519PublicKey, "Ed25519"))  # type: ignore[type-abstract]  # only used in isinstance

    def to_pem(self) -> bytes:
        """Serialise as a SubjectPublicKeyInfo PEM."""
        return _public_pem(self._key)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Return whether ``signature`` is valid for ``data``."""
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        """Keys are equal when their raw bytes are."""
        return isinstance(other, VerifyKey) and other.raw == self.raw

    def __hash__(self) -> int:
        """Hash by raw bytes."""
        return hash(self.raw)

    def __repr__(self) -> str:
        """Show the key id only."""
        return f"VerifyKey(kid={self.kid!r})"


class SigningKey:
    """An Ed25519 private key."""

    __slots__ = ("_key", "public_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        """Wrap a cryptography private key."""
        self._key = key
        self.public_key = VerifyKey(key.public_key())

    @classmethod
    def generate(cls) -> SigningKey:
        """Make a new key from the operating system's randomness.

        This and `EncryptionKey.generate` are the only calls in the package that draw randomness
        themselves; use `from_raw` with your own 32 random bytes to stay fully deterministic.
        """
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_raw(cls, raw: bytes) -> SigningKey:
        """Load from the 32-byte seed.

        Raises:
            SchemaError: Not 32 bytes.
        """
        return cls(Ed25519PrivateKey.from_private_bytes(_check_raw(raw, "an Ed25519 private key")))

    @classmethod
    def from_pem(cls, pem: bytes, password: bytes | None = None) -> SigningKey:
        """Load from a PKCS#8 PEM.

        Raises:
            SchemaError: Not an Ed25519 private key PEM (or a wrong password).
        """
        return cls(_load_private_pem(pem, password, Ed25519PrivateKey, "Ed25519"))  # type: ignore[type-abstract]  # only used in isinstance

    def to_raw(self) -> bytes:
        """Return the 32-byte seed."""
        return _private_raw(self._key)

    def to_pem(self, password: bytes | None = None) -> bytes:
        """Serialise as PKCS#8 PEM, encrypted when a password is given."""
        return _private_pem(self._key, password)

    @property
    def kid(self) -> str:
        """The key id of the public half."""
        return self.public_key.kid

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def __repr__(self) -> str:
        """Never show the secret."""
        return f"SigningKey(kid={self.kid!r})"


class EncryptionPublicKey:
    """An X25519 public key that envelopes are sealed to."""

    __slots__ = ("key", "kid", "raw")

    def __init__(self, key: X25519PublicKey) -> None:
        """Wrap a cryptography public key."""
        self.key = key
        self.raw: bytes = _public_raw(key)
        self.kid: str = key_id(self.raw)

    @classmethod
    def from_raw(cls, raw: bytes) -> EncryptionPublicKey:
        """Load from the 32 raw bytes.

        Raises:
            SchemaError: Not 32 bytes.
        """
        return cls(X25519PublicKey.from_public_bytes(_check_raw(raw, "an X25519 public key")))

    @classmethod
    def from_pem(cls, pem: bytes) -> EncryptionPublicKey:
        """Load from a SubjectPublicKeyInfo PEM.

        Raises:
            SchemaError: Not an X25519 public key PEM.
        """
        return cls(_load_public_pem(pem, X25519PublicKey, "X25519"))  # type: ignore[type-abstract]  # only used in isinstance

    def to_pem(self) -> bytes:
        """Serialise as a SubjectPublicKeyInfo PEM."""
        return _public_pem(self.key)

    def __eq__(self, other: object) -> bool:
        """Keys are equal when their raw bytes are."""
        return isinstance(other, EncryptionPublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        """Hash by raw bytes."""
        return hash(self.raw)

    def __repr__(self) -> str:
        """Show the key id only."""
        return f"EncryptionPublicKey(kid={self.kid!r})"


class EncryptionKey:
    """An X25519 private key that opens sealed envelopes."""

    __slots__ = ("key", "public_key")

    def __init__(self, key: X25519PrivateKey) -> None:
        """Wrap a cryptography private key."""
        self.key = key
        self.public_key = EncryptionPublicKey(key.public_key())

    @classmethod
    def generate(cls) -> EncryptionKey:
        """Make a new key from the operating system's randomness."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_raw(cls, raw: bytes) -> EncryptionKey:
        """Load from the 32 raw bytes.

        Raises:
            SchemaError: Not 32 bytes.
        """
        return cls(X25519PrivateKey.from_private_bytes(_check_raw(raw, "an X25519 private key")))

    @classmethod
    def from_pem(cls, pem: bytes, password: bytes | None = None) -> EncryptionKey:
        """Load from a PKCS#8 PEM.

        Raises:
            SchemaError: Not an X25519 private key PEM (or a wrong password).
        """
        return cls(_load_private_pem(pem, password, X25519PrivateKey, "X25519"))  # type: ignore[type-abstract]  # only used in isinstance

    def to_raw(self) -> bytes:
        """Return the 32 raw private bytes."""
        return _private_raw(self.key)

    def to_pem(self, password: bytes | None = None) -> bytes:
        """Serialise as PKCS#8 PEM, encrypted when a password is given."""
        return _private_pem(self.key, password)

    @property
    def kid(self) -> str:
        """The key id of the public half."""
        return self.public_key.kid

    def __repr__(self) -> str:
        """Never show the secret."""
        return f"EncryptionKey(kid={self.kid!r})"
