"""User JWT validation: OIDC discovery, a JWKS cache of our own, joserfc for the checks.

Production tokens (Azure AD B2C) and the development issuer's tokens go through this
one code path. joserfc has no server-side JWKS cache, so :class:`JwksCache` keeps the
issuer's key set, refreshes it when it is older than ``ttl_s`` and when a token names an
unknown ``kid`` (key rotation), and never refetches more than once per
``min_refresh_interval_s`` so that a flood of tokens with made-up ``kid`` values cannot
turn the service into a load generator against the identity provider.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingAlgorithmError,
    MissingClaimError,
)
from joserfc.jwk import KeySet

from amora_authz._errors import AuthenticationError, ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Claims", "JwksCache", "OidcSettings", "TokenValidator", "UnverifiedToken", "peek"]


class OidcSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where user tokens come from and what they must say.

    Attributes:
        issuer: expected ``iss``; discovery is fetched from
            ``{issuer}/.well-known/openid-configuration`` unless ``discovery_url`` is set.
        audience: expected ``aud`` (the service's client/application id).
        discovery_url: explicit discovery document URL (Azure AD B2C puts the policy
            name in it).
        algorithms: accepted signature algorithms.
        leeway_s: clock leeway for ``exp``/``nbf``/``iat``.
        roles_claim: claim holding the user's roles (a list of strings, or one string).
        admin_role: the role that grants the admin API.
        jwks_ttl_s: refetch the key set when it is older than this.
        min_refresh_interval_s: never refetch more often than this.
    """

    issuer: str
    audience: str
    discovery_url: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_s: int = 30
    roles_claim: str = "roles"
    admin_role: str = "amora-admin"
    jwks_ttl_s: float = 3600.0
    min_refresh_interval_s: float = 10.0


class Claims(msgspec.Struct, frozen=True, kw_only=True):
    """The facts the service takes from a validated token.

    Attributes:
        subject: the user's stable id (``sub``).
        expires_at: ``exp`` (seconds since the epoch).
        roles: roles from the configured claim.
        name: a display name when the token carries one.
    """

    subject: str
    expires_at: int
    roles: tuple[str, ...] = ()
    name: str | None = None

    def has_role(self, role: str) -> bool:
        """Return whether the token carries ``role``."""
        return role in self.roles


class UnverifiedToken(msgspec.Struct, frozen=True, kw_only=True):
    """A compact JWS taken apart *without* checking anything: only to choose how to check it.

    Attributes:
        header: the protected header (``alg``, ``kid``...).
        payload: the payload bytes, as sent.
    """

    header: dict[str, Any]
    payload: bytes

    def issuer(self) -> str | None:
        """The payload's ``iss`` (unverified), ``None`` when it names none.

        Raises:
            AuthenticationError: ``malformed_token``: the payload is not JSON.
        """
        try:
            claims = json.loads(self.payload)
        except ValueError as exc:
            raise AuthenticationError("the token cannot be decoded", code="malformed_token") from exc
        issuer = claims.get("iss") if isinstance(claims, dict) else None
        return issuer if isinstance(issuer, str) else None


def peek(token: str) -> UnverifiedToken:
    """Take a compact JWS apart with joserfc (`joserfc.jws.extract_compact`), verifying nothing.

    Raises:
        AuthenticationError: ``unsupported_algorithm`` when the header names no algorithm,
            ``malformed_token`` when the token is not a compact JWS.
    """
    try:
        compact = jws.extract_compact(token.encode("ascii"))
    except MissingAlgorithmError as exc:
        raise AuthenticationError("the token names no algorithm", code="unsupported_algorithm") from exc
    except (JoseError, UnicodeEncodeError, ValueError) as exc:
        raise AuthenticationError("the token is not a compact JWS", code="malformed_token") from exc
    return UnverifiedToken(header=dict(compact.headers()), payload=compact.payload)


class JwksCache:
    """The issuer's signing keys, fetched through OIDC discovery and cached."""

    def __init__(
        self,
        settings: OidcSettings,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create an empty cache (nothing is fetched until a token needs it).

        Args:
            settings: the issuer settings.
            http: client used for discovery and JWKS requests.
            clock: monotonic clock (tests may pass their own).
        """
        self._settings = settings
        self._http = http
        self._clock = clock
        self._keys: KeySet | None = None
        self._jwks_uri: str | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetch_count = 0

    async def _discover(self) -> str:
        if self._jwks_uri is None:
            url = self._settings.discovery_url or (
                self._settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            )
            document = await self._get_json(url)
            uri = document.get("jwks_uri")
            if not isinstance(uri, str):
                raise AuthenticationError("the issuer's discovery document has no jwks_uri", code="issuer_unavailable")
            if document.get("issuer") not in (None, self._settings.issuer):
                raise ConfigError(
                    f"discovery says issuer {document.get('issuer')!r}, configured {self._settings.issuer!r}"
                )
            self._jwks_uri = uri
        return self._jwks_uri

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise AuthenticationError(
                f"cannot fetch the issuer's metadata from {url}: {exc}",
                code="issuer_unavailable",
            ) from exc
        if not isinstance(document, dict):
            raise AuthenticationError(f"{url} did not return an object", code="issuer_unavailable")
        return document

    async def _refresh(self) -> None:
        self._attempted_at = self._clock()
        uri = await self._discover()
        document = await self._get_json(uri)
        try:
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise AuthenticationError(f"the issuer's key set is invalid: {exc}", code="issuer_unavailable") from exc
        self._keys = keys
        self._fetched_at = self._attempted_at
        self.fetch_count += 1

    async def key_for(self, kid: str | None) -> Any:  # noqa: ANN401 - joserfc's Key union
        """Return the issuer key named ``kid``, refetching the key set when needed.

        At most one fetch is attempted per ``min_refresh_interval_s``, whether it
        succeeds or not; a key set past its TTL keeps serving while the issuer is down.

        Raises:
            AuthenticationError: no such key (``unknown_key``), or no key set could be
                fetched (``issuer_unavailable``).
        """
        async with self._lock:
            now = self._clock()
            may_fetch = now - self._attempted_at >= self._settings.min_refresh_interval_s
            if may_fetch and (self._keys is None or now - self._fetched_at > self._settings.jwks_ttl_s):
                may_fetch = False
                try:
                    await self._refresh()
                except AuthenticationError:
                    if self._keys is None:
                        raise
            if self._keys is None:
                raise AuthenticationError(
                    "the issuer's keys are not available (retrying later)", code="issuer_unavailable"
                )
            key = self._find(kid)
            if key is None and may_fetch:
                await self._refresh()
                key = self._find(kid)
        if key is None:
            raise AuthenticationError(f"no issuer key with kid {kid!r}", code="unknown_key")
        return key

    def _find(self, kid: str | None) -> Any:  # noqa: ANN401 - joserfc's Key union
        if self._keys is None:
            return None
        if kid is None:
            keys = list(self._keys)
            return keys[0] if len(keys) == 1 else None
        for key in self._keys:
            if key.kid == kid:
                return key
        return None


class TokenValidator:
    """Validate user JWTs (signature, ``iss``, ``aud``, ``exp``, ``nbf``) and extract claims."""

    def __init__(
        self,
        settings: OidcSettings,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create a validator.

        Args:
            settings: the issuer settings.
            http: client used for discovery and JWKS requests.
            clock: wall clock in seconds (for ``exp``/``nbf``).
        """
        self.settings = settings
        self.jwks = JwksCache(settings, http)
        self._clock = clock

    async def validate(self, token: str) -> Claims:
        """Validate ``token`` and return its claims.

        Raises:
            AuthenticationError: with a code saying why (``expired_token``,
                ``invalid_audience``, ``invalid_issuer``, ``bad_signature``...).
        """
        header = peek(token).header
        alg = header.get("alg")
        if alg not in self.settings.algorithms:
            raise AuthenticationError(f"token algorithm {alg!r} is not accepted", code="unsupported_algorithm")
        kid = header.get("kid")
        key = await self.jwks.key_for(kid if isinstance(kid, str) else None)
        try:
            decoded = jwt.decode(token, key, algorithms=list(self.settings.algorithms))
        except BadSignatureError as exc:
            raise AuthenticationError("the token signature is invalid", code="bad_signature") from exc
        except JoseError as exc:
            raise AuthenticationError(f"the token is invalid: {exc}", code="malformed_token") from exc
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=self.settings.leeway_s,
            iss={"essential": True, "value": self.settings.issuer},
            aud={"essential": True, "value": self.settings.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(decoded.claims)
        except ExpiredTokenError as exc:
            raise AuthenticationError("the token has expired", code="expired_token") from exc
        except (InvalidClaimError, MissingClaimError) as exc:
            claim = getattr(exc, "claim", "")
            code = {"aud": "invalid_audience", "iss": "invalid_issuer", "nbf": "token_not_yet_valid"}
            raise AuthenticationError(f"the token is invalid: {exc}", code=code.get(claim, "invalid_claims")) from exc
        except JoseError as exc:
            raise AuthenticationError(f"the token is invalid: {exc}", code="invalid_claims") from exc
        return self._claims(decoded.claims)

    def _claims(self, claims: dict[str, Any]) -> Claims:
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise AuthenticationError("the token has no usable sub", code="invalid_claims")
        raw_roles = claims.get(self.settings.roles_claim, ())
        if isinstance(raw_roles, str):
            roles: tuple[str, ...] = tuple(raw_roles.split())
        elif isinstance(raw_roles, list):
            roles = tuple(r for r in raw_roles if isinstance(r, str))
        else:
            roles = ()
        name = claims.get("name")
        return Claims(
            subject=sub,
            expires_at=int(claims["exp"]),
            roles=roles,
            name=name if isinstance(name, str) else None,
        )
