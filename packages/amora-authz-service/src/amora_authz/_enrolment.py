"""Claim-based self-enrolment: a player registers itself with a one-time claim.

An admin issues a claim (``POST /v1/admin/enrolment-claims`` or ``amora-authz
enrolment-claim``): for one named device, or for a batch of ``uses`` devices, valid for
``ttl_s`` seconds. The player sends it with its public keys and CSR to ``POST /v1/enrol``
(``amora-agent enrol``) and gets its certificate; the registration is the admin one
(`AuthzService.register_device`), done on behalf of the admin who issued the claim, so the
same checks apply and the log names that admin.

Claims are 256 random bits, stored only as their SHA-256 (a claim that high in entropy
needs no slow hash: nothing can be guessed from the digest). Each use is taken with one
conditional ``UPDATE`` (uses left, not expired), so a claim cannot be used twice even by
concurrent requests; a registration that then fails gives its use back.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec
import sqlalchemy as sa
from litestar import post
from litestar.di import NamedDependency
from litestar.params import JSONBody  # noqa: TC002 - Litestar reads it at runtime

from amora_authz._bodies import Base64Key, DeviceRegisteredResponse
from amora_authz._errors import AuthzError, InvalidInputError, PermissionDeniedError
from amora_authz._inputs import device_id_of
from amora_authz._jwt import Claims
from amora_authz._runtime import AuthzRuntime
from amora_authz._schema import metadata
from amora_protocol import now_ms

if TYPE_CHECKING:
    from litestar.datastructures import CacheControlHeader
    from litestar.di import Provide

    from amora_authz._service import AuthzService
    from amora_authz._service_devices import DeviceRegistered
    from amora_authz._store import Store

__all__ = [
    "ClaimIssued",
    "ClaimRequest",
    "EnrolRequest",
    "EnrolmentClaimError",
    "claim_digest",
    "enrol_device",
    "enrolment_claims",
    "enrolment_handlers",
    "issue_claim",
]

CLAIM_PREFIX: Final = "amora-claim-"
DEFAULT_TTL_S: Final = 3600
MAX_TTL_S: Final = 7 * 24 * 3600
MAX_USES: Final = 10_000

Runtime = NamedDependency[AuthzRuntime]
AdminClaims = NamedDependency[Claims]

enrolment_claims = sa.Table(
    "enrolment_claims",
    metadata,
    sa.Column("claim_sha256", sa.Text, primary_key=True),
    sa.Column("device_id", sa.Text),  # NULL: a batch claim, any device id
    sa.Column("uses_left", sa.Integer, nullable=False),
    sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
)


class EnrolmentClaimError(PermissionDeniedError):
    """The claim is unknown, used up, expired, or for another device (403)."""

    default_code = "claim_invalid"


class ClaimRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Admin: issue a claim for one device (``device_id``) or for ``uses`` devices."""

    device_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    uses: Annotated[int, msgspec.Meta(ge=1, le=MAX_USES)] = 1
    ttl_s: Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL_S)] = DEFAULT_TTL_S


class ClaimIssued(msgspec.Struct, frozen=True, kw_only=True):
    """The claim (shown once: only its digest is stored) and what it allows."""

    claim: str
    device_id: str | None
    uses: int
    expires_at_ms: int


class EnrolRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A player enrols itself: the claim, its id, public keys and CSR (PEM)."""

    claim: Annotated[str, msgspec.Meta(max_length=128)]
    device_id: Annotated[str, msgspec.Meta(max_length=64)]
    signing_key: Base64Key
    encryption_key: Base64Key
    csr: Annotated[str, msgspec.Meta(max_length=16_384)]


def claim_digest(claim: str) -> str:
    """The stored form of a claim: hex SHA-256 of its text."""
    return hashlib.sha256(claim.encode()).hexdigest()


async def issue_claim(
    store: Store, *, by: str, device_id: str | None = None, uses: int = 1, ttl_s: int = DEFAULT_TTL_S
) -> ClaimIssued:
    """Make a claim and store its digest.

    Raises:
        InvalidInputError: a bad device id, or ``uses``/``ttl_s`` out of range (a claim for
            one device is used once).
    """
    if device_id is not None:
        device_id = device_id_of(device_id)
        if uses != 1:
            raise InvalidInputError("a claim for one device is used once: give uses=1 or no device_id")
    if not 1 <= uses <= MAX_USES:
        raise InvalidInputError(f"uses must be 1..{MAX_USES}")
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise InvalidInputError(f"ttl_s must be 1..{MAX_TTL_S} (a claim is short-lived)")
    claim = CLAIM_PREFIX + secrets.token_urlsafe(32)
    now = now_ms()
    expires = now + ttl_s * 1000
    await store._execute(  # noqa: SLF001 - the store's statement runner, shared by the package
        enrolment_claims.insert().values(
            claim_sha256=claim_digest(claim),
            device_id=device_id,
            uses_left=uses,
            expires_at_ms=expires,
            created_at_ms=now,
            created_by=by,
        )
    )
    return ClaimIssued(claim=claim, device_id=device_id, uses=uses, expires_at_ms=expires)


async def _take_use(store: Store, claim: str, device_id: str) -> str:
    """Take one use of ``claim`` for ``device_id``; return the admin who issued it.

    Raises:
        EnrolmentClaimError: unknown, used up, expired, or for another device.
    """
    digest = claim_digest(claim)
    rows = await store._rows(sa.select(enrolment_claims).where(enrolment_claims.c.claim_sha256 == digest))  # noqa: SLF001
    fix = "ask your administrator for a new claim (amora-authz enrolment-claim)"
    if not rows:
        raise EnrolmentClaimError(f"unknown enrolment claim: {fix}", code="claim_unknown")
    row = rows[0]
    now = now_ms()
    if row.device_id is not None and row.device_id != device_id:
        raise EnrolmentClaimError(
            f"this claim is for device {row.device_id!r}, not {device_id!r}: set device_id in the agent's "
            "configuration to match, or ask for a claim for this device",
            code="claim_other_device",
        )
    if row.expires_at_ms <= now:
        raise EnrolmentClaimError(f"the enrolment claim has expired: {fix}", code="claim_expired")
    taken = await store._execute(  # noqa: SLF001
        enrolment_claims.update()
        .where(
            enrolment_claims.c.claim_sha256 == digest,
            enrolment_claims.c.uses_left > 0,
            enrolment_claims.c.expires_at_ms > now,
        )
        .values(uses_left=enrolment_claims.c.uses_left - 1)
        .returning(enrolment_claims.c.claim_sha256)
    )
    if not taken:
        raise EnrolmentClaimError(f"the enrolment claim has already been used: {fix}", code="claim_used")
    return str(row.created_by)


async def _give_back(store: Store, claim: str) -> None:
    await store._execute(  # noqa: SLF001
        enrolment_claims.update()
        .where(enrolment_claims.c.claim_sha256 == claim_digest(claim))
        .values(uses_left=enrolment_claims.c.uses_left + 1)
    )


async def enrol_device(service: AuthzService, store: Store, request: EnrolRequest) -> DeviceRegistered:
    """Register the device with one use of its claim (given back if the registration fails).

    Raises:
        EnrolmentClaimError: the claim cannot be used (see `_take_use`).
        AuthzError: the registration failed (bad keys or CSR, id taken...).
    """
    device_id = device_id_of(request.device_id)
    admin = await _take_use(store, request.claim, device_id)
    # The claim stands for the admin who issued it: the registration is theirs.
    on_behalf = Claims(subject=admin, expires_at=now_ms() // 1000 + 60, roles=(service.admin_role,))
    try:
        return await service.register_device(
            on_behalf,
            device_id=device_id,
            signing_key=request.signing_key,
            encryption_key=request.encryption_key,
            csr_pem=request.csr,
        )
    except AuthzError:
        await _give_back(store, request.claim)
        raise


def enrolment_handlers(*, admin: dict[str, Provide], no_store: CacheControlHeader) -> list[Any]:
    """The two routes, with the app's admin dependency and no-store cache header."""

    @post(
        "/v1/admin/enrolment-claims",
        status_code=201,
        tags=["admin"],
        cache_control=no_store,
        dependencies=admin,
    )
    async def issue_enrolment_claim(data: JSONBody[ClaimRequest], claims: AdminClaims, runtime: Runtime) -> ClaimIssued:
        """Issue a one-time enrolment claim (shown once)."""
        runtime.service.require_admin(claims)
        issued = await issue_claim(
            runtime.store, by=claims.subject, device_id=data.device_id, uses=data.uses, ttl_s=data.ttl_s
        )
        runtime.log.info("enrolment.claim_issued", device_id=issued.device_id, uses=issued.uses, by=claims.subject)
        return issued

    @post("/v1/enrol", status_code=201, tags=["devices"], cache_control=no_store)
    async def enrol(data: JSONBody[EnrolRequest], runtime: Runtime) -> DeviceRegisteredResponse:
        """A player enrols itself with a claim: registered, its CSR answered with a certificate."""
        registered = await enrol_device(runtime.service, runtime.store, data)
        runtime.log.info("enrolment.enrolled", device_id=registered.device.device_id)
        return DeviceRegisteredResponse(
            device_id=registered.device.device_id,
            certificate=None if registered.certificate_pem is None else registered.certificate_pem.decode(),
            serial=None if registered.serial is None else str(registered.serial),
        )

    return [issue_enrolment_claim, enrol]
