"""JWT validation: discovery, JWKS cache and rotation, RS256/ES256, iss/aud/exp/nbf.

The identity provider here is an OIDC issuer answering discovery and JWKS requests
over httpx's transport interface (Azure AD B2C cannot run here); the development
issuer is exercised over real HTTP in test_api.py.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from amora_authz import AuthenticationError, OidcSettings
from amora_authz._jwt import TokenValidator

ISSUER = "https://login.example.test/tenant/v2.0"
AUDIENCE = "amora-api"


class Issuer:
    """An OIDC provider: discovery + JWKS, keys rotated on demand."""

    def __init__(self) -> None:
        self.keys: list[Any] = [
            RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}),
            ECKey.generate_key("P-256", parameters={"kid": "ec-1"}),
        ]
        self.jwks_requests = 0
        self.discovery_requests = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/openid-configuration"):
            self.discovery_requests += 1
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": "https://login.example.test/keys"})
        if request.url.path == "/keys":
            self.jwks_requests += 1
            return httpx.Response(200, json=KeySet(self.keys).as_dict(private=False))
        return httpx.Response(404)

    def token(self, key: Any = None, *, alg: str = "RS256", **claims: Any) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 600}
        body.update(claims)
        return jwt.encode({"alg": alg, "kid": key.kid}, {k: v for k, v in body.items() if v is not None}, key)


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
async def validator(issuer: Issuer):
    async with httpx.AsyncClient(transport=httpx.MockTransport(issuer.handler)) as http:
        yield TokenValidator(
            OidcSettings(issuer=ISSUER, audience=AUDIENCE, leeway_s=30, min_refresh_interval_s=60),
            http,
        )


async def test_rs256_and_es256_are_accepted(issuer: Issuer, validator: TokenValidator) -> None:
    claims = await validator.validate(issuer.token(roles=["amora-admin"], name="Ada"))
    assert claims.subject == "user-1"
    assert claims.roles == ("amora-admin",)
    assert claims.name == "Ada"
    es = await validator.validate(issuer.token(issuer.keys[1], alg="ES256", sub="user-2"))
    assert es.subject == "user-2"
    assert issuer.discovery_requests == 1
    assert issuer.jwks_requests == 1  # cached across tokens


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"exp": int(time.time()) - 120}, "expired_token"),
        ({"aud": "someone-else"}, "invalid_audience"),
        ({"iss": "https://evil.example.test"}, "invalid_issuer"),
        ({"nbf": int(time.time()) + 600}, "token_not_yet_valid"),
        ({"sub": None}, "invalid_claims"),
        ({"exp": None}, "invalid_claims"),
    ],
)
async def test_bad_claims_are_refused(
    issuer: Issuer, validator: TokenValidator, claims: dict[str, Any], code: str
) -> None:
    with pytest.raises(AuthenticationError) as info:
        await validator.validate(issuer.token(**claims))
    assert info.value.code == code
    assert info.value.status_code == 401


async def test_leeway_accepts_small_skew(issuer: Issuer, validator: TokenValidator) -> None:
    claims = await validator.validate(issuer.token(exp=int(time.time()) - 10))
    assert claims.subject == "user-1"


async def test_forged_signature_is_refused(issuer: Issuer, validator: TokenValidator) -> None:
    forger = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, other key
    with pytest.raises(AuthenticationError) as info:
        await validator.validate(issuer.token(forger))
    assert info.value.code == "bad_signature"


async def test_algorithm_outside_the_allow_list_is_refused(issuer: Issuer, validator: TokenValidator) -> None:
    # The classic confusion attack: HS256 keyed with something the attacker knows.
    secret = OctKey.import_key(b"k" * 32, parameters={"kid": "rsa-1"})
    token = issuer.token(secret, alg="HS256")
    with pytest.raises(AuthenticationError) as info:
        await validator.validate(token)
    assert info.value.code == "unsupported_algorithm"


async def test_garbage_is_refused(validator: TokenValidator) -> None:
    for token in ("", "abc", "a.b.c", "e30.e30.", "!!!.???.###"):
        with pytest.raises(AuthenticationError):
            await validator.validate(token)


async def test_rotation_refreshes_on_unknown_kid_but_rate_limited(issuer: Issuer) -> None:
    now = [1000.0]
    async with httpx.AsyncClient(transport=httpx.MockTransport(issuer.handler)) as http:
        validator = TokenValidator(OidcSettings(issuer=ISSUER, audience=AUDIENCE, min_refresh_interval_s=30), http)
        validator.jwks._clock = lambda: now[0]
        await validator.validate(issuer.token())
        assert issuer.jwks_requests == 1

        rotated = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
        issuer.keys.append(rotated)
        # Right after a fetch, an unknown kid does not trigger another one...
        for _ in range(5):
            with pytest.raises(AuthenticationError) as info:
                await validator.validate(issuer.token(rotated))
            assert info.value.code == "unknown_key"
        assert issuer.jwks_requests == 1
        # ...once the interval has passed, one refetch picks the new key up.
        now[0] += 31
        assert (await validator.validate(issuer.token(rotated))).subject == "user-1"
        assert issuer.jwks_requests == 2
        # Made-up kids cost at most one fetch per interval.
        for i in range(5):
            with pytest.raises(AuthenticationError):
                await validator.validate(issuer.token(RSAKey.generate_key(2048, parameters={"kid": f"x{i}"})))
        assert issuer.jwks_requests == 2


async def test_unreachable_issuer_is_a_401_and_is_not_hammered(issuer: Issuer) -> None:
    attempts = []
    up = [False]

    def flaky(request: httpx.Request) -> httpx.Response:
        attempts.append(request.url.path)
        if not up[0]:
            raise httpx.ConnectError("refused", request=request)
        return issuer.handler(request)

    now = [1000.0]
    async with httpx.AsyncClient(transport=httpx.MockTransport(flaky)) as http:
        validator = TokenValidator(
            OidcSettings(issuer=ISSUER, audience=AUDIENCE, min_refresh_interval_s=30, jwks_ttl_s=60), http
        )
        validator.jwks._clock = lambda: now[0]
        for _ in range(5):
            with pytest.raises(AuthenticationError) as info:
                await validator.validate(issuer.token())
            assert info.value.code == "issuer_unavailable"
        assert len(attempts) == 1  # one attempt per interval, however many tokens
        up[0] = True
        now[0] += 31
        assert (await validator.validate(issuer.token())).subject == "user-1"
        # Past the TTL with the issuer down again, the cached keys keep working.
        up[0] = False
        now[0] += 120
        assert (await validator.validate(issuer.token())).subject == "user-1"
