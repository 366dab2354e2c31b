"""The development OpenID provider: RS256 tokens for named development users.

Off unless enabled. It publishes a discovery document and a JWKS like a real provider,
so its tokens go through exactly the production validation path (discovery, JWKS
cache, signature, ``iss``/``aud``/``exp``/``nbf``). Tokens are minted with joserfc
(authlib's JOSE successor, same author; authlib's own ``authlib.jose`` is deprecated).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from amora_authz._errors import PermissionDeniedError
from amora_authz._keyfiles import read_private, write_private

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = ["DevIssuer"]

PATH = "/dev-issuer"
"""Where the issuer is mounted under the service's base URL."""


class DevIssuer:
    """Mints development tokens and serves the provider metadata."""

    def __init__(  # noqa: PLR0913 - the issuer's settings, all keyword-only
        self,
        *,
        key: RSAKey,
        issuer: str,
        audience: str,
        users: Sequence[str],
        admins: Sequence[str] = (),
        ttl_s: int = 3600,
        roles_claim: str = "roles",
        admin_role: str = "amora-admin",
    ) -> None:
        """Create the issuer.

        Args:
            key: the RSA signing key (with a ``kid``).
            issuer: the ``iss`` it writes (the service's base URL + ``/dev-issuer``).
            audience: the ``aud`` it writes.
            users: the development users it issues tokens for.
            admins: those of them that get ``admin_role``.
            ttl_s: token lifetime.
            roles_claim: claim carrying roles.
            admin_role: the admin role name.
        """
        self.key = key
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.users = frozenset(users)
        self.admins = frozenset(admins)
        self.ttl_s = ttl_s
        self.roles_claim = roles_claim
        self.admin_role = admin_role

    @staticmethod
    def load_or_create_key(path: Path) -> RSAKey:
        """Load the issuer key from ``path`` (JWK JSON), creating it on first use."""
        if path.exists():
            return RSAKey.import_key(json.loads(read_private(path, "development issuer key")))
        key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex[:16]})
        write_private(path, json.dumps(key.as_dict(private=True)).encode())
        return key

    def discovery(self) -> dict[str, Any]:
        """The OpenID Provider metadata document."""
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "token_endpoint": f"{self.issuer}/token",
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "grant_types_supported": ["password"],
        }

    def jwks(self) -> dict[str, Any]:
        """The public key set."""
        return {"keys": [self.key.as_dict(private=False, use="sig", alg="RS256")]}

    def issue(
        self,
        username: str,
        *,
        now: float | None = None,
        ttl_s: int | None = None,
        audience: str | None = None,
    ) -> str:
        """Mint a token for a named development user.

        Raises:
            PermissionDeniedError: ``username`` is not a configured development user.
        """
        if username not in self.users:
            raise PermissionDeniedError(f"{username!r} is not a development user", code="unknown_dev_user")
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": username,
            "aud": audience or self.audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + (self.ttl_s if ttl_s is None else ttl_s),
            "name": username,
            "jti": uuid.uuid4().hex,
            self.roles_claim: [self.admin_role] if username in self.admins else [],
        }
        return jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)
