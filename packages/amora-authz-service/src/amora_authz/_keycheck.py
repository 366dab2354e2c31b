"""Refuse degenerate public keys: small-order Ed25519 and X25519 points, and non-points.

A session's Ed25519 key and X25519 key end up in grants that devices trust. A
small-order X25519 key makes every HPKE shared secret predictable (all-zero), and a
small-order Ed25519 key admits signatures that verify for many messages under lax
verifiers. Neither has a legitimate use, so both are refused at the API.

Strategy: X25519 multiplies by a scalar that is a multiple of the cofactor 8, so a
small-order point gives the all-zero result, which OpenSSL refuses ("Error computing
shared key"). An Ed25519 point maps to the Montgomery curve (u = (1 + y) / (1 - y)),
an isomorphism that keeps each point's order, so the same test covers it.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

__all__ = ["is_degenerate_ed25519", "is_degenerate_x25519"]

_P = 2**255 - 19
_D = (-121665 * pow(121666, -1, _P)) % _P


def is_degenerate_x25519(raw: bytes) -> bool:
    """Whether a 32-byte X25519 public key is of small order (incl. all-zero)."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        return True
    return False


def is_degenerate_ed25519(raw: bytes) -> bool:
    """Whether a 32-byte Ed25519 public key is not a point, non-canonical, or of small order."""
    if len(raw) != 32:
        return True
    encoded = int.from_bytes(raw, "little")
    sign = encoded >> 255
    y = encoded & ((1 << 255) - 1)
    if y >= _P:
        return True  # non-canonical encoding
    # x^2 = (y^2 - 1) / (d y^2 + 1): a point exists when that is a square.
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    if x2 == 0:
        if sign:
            return True  # "-0": a non-canonical encoding
    elif pow(x2, (_P - 1) // 2, _P) != 1:
        return True  # not on the curve
    if y == 1:
        return True  # the identity
    u = (1 + y) * pow(1 - y, -1, _P) % _P
    return is_degenerate_x25519(u.to_bytes(32, "little"))
