"""HTTP API of backend identities: the admin routes, and the routes backends call themselves.

Admin (``Bearer`` admin token, the admin rate limit):

- ``POST /v1/admin/backends`` ``{name, role, replicas}``: create; answers the credential once;
- ``GET /v1/admin/backends`` and ``GET /v1/admin/backends/{name}``: what exists (no password);
- ``POST /v1/admin/backends/{name}/rotate``: a new password (the old one is refused on every
  broker before this answers 200; ``503 change_pending`` while one is behind);
- ``DELETE /v1/admin/backends/{name}``: accounts deleted (connections kicked), grants revoked.

Backends (``Basic`` with any of their account names and the password, the admin rate limit
per backend):

- ``GET /v1/backend/devices?after=&limit=``: active devices' public keys, a page at a time;
- ``GET /v1/backend/devices/{id}``: one device's keys (a state signed by a key not cached yet);
- ``POST /v1/backend/grants`` (``support`` only): a grant for the backend's own key pair.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec
import sqlalchemy as sa
from litestar import Request, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from amora_authz._backends import Backend
from amora_authz._errors import InvalidInputError, NotFoundError, PermissionDeniedError, RateLimitedError
from amora_authz._inputs import device_id_of, session_keys
from amora_authz._jwt import Claims
from amora_authz._runtime import AuthzRuntime
from amora_authz._schema import devices
from amora_authz._service import b64
from amora_protocol import (
    BackendGrantRequest,
    BackendGrantResponse,
    BackendRole,
    DeviceKeyPage,
    DevicePublicKeys,
    Grant,
    Right,
    backend_kinds,
    issue_grant,
    now_ms,
    shared_subscription,
)

if TYPE_CHECKING:
    from litestar.datastructures import CacheControlHeader

__all__ = ["BackendCreate", "BackendCredential", "BackendInfo", "BackendList", "backend_handlers"]

DEFAULT_LIMIT: Final = 500
MAX_LIMIT: Final = 1000

Runtime = NamedDependency[AuthzRuntime]
AdminClaims = NamedDependency[Claims]
CallingBackend = NamedDependency[Backend]


class BackendCreate(msgspec.Struct, frozen=True, kw_only=True):
    """Admin: create a backend (``role``: analytics, support or ingest; ``replicas``: 1-16 slots)."""

    name: Annotated[str, msgspec.Meta(max_length=64)]
    role: Annotated[str, msgspec.Meta(max_length=32)]
    replicas: int = 2


class BackendInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A backend as the admin API shows it (never its password).

    Attributes:
        name: its name (also its share group).
        role: analytics, support or ingest.
        replicas: replica slots; ``usernames`` has one broker account per slot.
        generation: credential generation (bumped by each rotation).
        usernames: broker username = client id of each slot.
        subscriptions: the shared subscriptions its role may take.
        created_at_ms: creation time.
        rotated_at_ms: last rotation.
        created_by: the admin who created it.
    """

    name: str
    role: str
    replicas: int
    generation: int
    usernames: list[str]
    subscriptions: list[str]
    created_at_ms: int
    rotated_at_ms: int
    created_by: str


class BackendCredential(msgspec.Struct, frozen=True, kw_only=True):
    """A backend and its password (answered on creation and rotation only), with the brokers."""

    backend: BackendInfo
    password: str
    endpoints: list[str]


class BackendList(msgspec.Struct, frozen=True, kw_only=True):
    """Every backend, by name."""

    backends: list[BackendInfo]


def _info(backend: Backend) -> BackendInfo:
    return BackendInfo(
        name=backend.name,
        role=backend.role.value,
        replicas=backend.replicas,
        generation=backend.generation,
        usernames=list(backend.accounts),
        subscriptions=[shared_subscription(backend.name, kind) for kind in backend_kinds(backend.role)],
        created_at_ms=backend.created_at_ms,
        rotated_at_ms=backend.rotated_at_ms,
        created_by=backend.created_by,
    )


def _credential(runtime: AuthzRuntime, backend: Backend) -> BackendCredential:
    return BackendCredential(
        backend=_info(backend),
        password=runtime.backends.password(backend),
        endpoints=runtime.broker_endpoints(),
    )


async def _provide_backend(request: Request[Any, Any, Any], runtime: Runtime) -> Backend:
    """The calling backend (HTTP Basic), once within its rate limit."""
    backend = await runtime.backends.authenticate(request.headers.get("authorization"))
    try:
        runtime.limits.check("admin", backend.account)
    except RateLimitedError as exc:
        runtime.metrics.inc("amora_authz_rate_limited_total", limit=exc.limit)
        raise
    return backend


def _keys(row: sa.Row[Any]) -> DevicePublicKeys:
    # Stored as base64 text already (the store's encoding).
    return DevicePublicKeys(device_id=row.device_id, signing_key=row.signing_key, encryption_key=row.encryption_key)


async def _grant(runtime: AuthzRuntime, backend: Backend, data: BackendGrantRequest) -> BackendGrantResponse:
    """Sign a grant for a support backend's key pair over the devices it names.

    Raises:
        PermissionDeniedError: ``not_support``.
        InvalidInputError: a bad key (``invalid_key``) or device (``unknown_device``).
    """
    if backend.role is not BackendRole.SUPPORT:
        raise PermissionDeniedError(
            f"backend {backend.name!r} has the role {backend.role.value!r}; only support backends get grants "
            "(create one with role support)",
            code="not_support",
        )
    raw_sign, raw_enc = session_keys(data.signing_key, data.encryption_key)
    found = []
    for device_id in dict.fromkeys(data.devices):
        device = await runtime.store.get_device(device_id_of(device_id))
        if device is None or device.revoked:
            raise InvalidInputError(
                f"no active device {device_id!r}: a grant covers registered, unrevoked devices only",
                code="unknown_device",
            )
        found.append(device)
    now = now_ms()
    expires = now + runtime.service.session_ttl_s * 1000
    grant = Grant(
        grant_id=str(uuid.uuid4()),
        subject=f"backend:{backend.name}",
        session_id=backend.account,
        signing_key=raw_sign,
        encryption_key=raw_enc,
        devices=tuple(d.device_id for d in found),
        rights=(Right.WATCH, Right.CONTROL),
        issued_at_ms=now,
        expires_at_ms=expires,
    )
    token = issue_grant(grant, runtime.service.signing_keys[0])
    runtime.log.info("backend.grant_issued", backend=backend.name, devices=len(found))
    return BackendGrantResponse(
        grant=b64(token),
        session_id=backend.account,
        expires_at=expires,
        devices=tuple(
            DevicePublicKeys(
                device_id=d.device_id, signing_key=b64(d.signing_key), encryption_key=b64(d.encryption_key)
            )
            for d in found
        ),
    )


def backend_handlers(*, admin: dict[str, Provide], no_store: CacheControlHeader) -> list[Any]:  # noqa: C901 - one closure per route
    """The routes, with the app's admin dependency and its no-store header."""
    backend_auth = {"backend": Provide(_provide_backend)}

    @post(
        "/v1/admin/backends",
        status_code=HTTP_201_CREATED,
        tags=["backends"],
        dependencies=admin,
        cache_control=no_store,
    )
    async def create_backend(data: JSONBody[BackendCreate], claims: AdminClaims, runtime: Runtime) -> BackendCredential:
        """Create a backend identity: its broker accounts, role and password (shown once)."""
        runtime.service.require_admin(claims)
        backend = await runtime.backends.create(
            name=data.name, role=data.role, replicas=data.replicas, by=claims.subject, at_ms=now_ms()
        )
        runtime.log.info("backend.created", backend=backend.name, role=backend.role.value, by=claims.subject)
        return _credential(runtime, backend)

    @get("/v1/admin/backends", tags=["backends"], dependencies=admin)
    async def list_backends(claims: AdminClaims, runtime: Runtime) -> BackendList:
        """Every backend identity (no passwords)."""
        runtime.service.require_admin(claims)
        return BackendList(backends=[_info(b) for b in await runtime.backends.list()])

    @get("/v1/admin/backends/{name:str}", tags=["backends"], dependencies=admin)
    async def get_backend(name: FromPath[str], claims: AdminClaims, runtime: Runtime) -> BackendInfo:
        """One backend identity (no password)."""
        runtime.service.require_admin(claims)
        return _info(await runtime.backends.require(name))

    @post(
        "/v1/admin/backends/{name:str}/rotate",
        status_code=HTTP_200_OK,
        tags=["backends"],
        dependencies=admin,
        cache_control=no_store,
    )
    async def rotate_backend(name: FromPath[str], claims: AdminClaims, runtime: Runtime) -> BackendCredential:
        """A new password; connections with the old one are cut and cannot log in again."""
        runtime.service.require_admin(claims)
        backend = await runtime.backends.rotate_credential(name, at_ms=now_ms())
        runtime.log.info("backend.rotated", backend=name, generation=backend.generation, by=claims.subject)
        return _credential(runtime, backend)

    @delete("/v1/admin/backends/{name:str}", status_code=HTTP_204_NO_CONTENT, tags=["backends"], dependencies=admin)
    async def delete_backend(name: FromPath[str], claims: AdminClaims, runtime: Runtime) -> None:
        """Delete a backend: accounts gone on every broker, support grants revoked on devices."""
        runtime.service.require_admin(claims)
        await runtime.backends.delete(name)
        runtime.log.info("backend.deleted", backend=name, by=claims.subject)

    @get("/v1/backend/devices", tags=["backend"], dependencies=backend_auth)
    async def backend_devices(
        *,
        backend: CallingBackend,
        runtime: Runtime,
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        after: Annotated[str | None, Parameter(max_length=64)] = None,
    ) -> DeviceKeyPage:
        """Active devices' public keys by id, a page at a time (any backend role)."""
        del backend  # authenticated: that is all a public key needs
        query = sa.select(devices).where(devices.c.revoked_at_ms.is_(None)).order_by(devices.c.device_id)
        if after is not None:
            query = query.where(devices.c.device_id > after)
        rows = await runtime.store._rows(query.limit(limit + 1))  # noqa: SLF001 - the store's query runner
        page = tuple(_keys(r) for r in rows[:limit])
        return DeviceKeyPage(devices=page, next=page[-1].device_id if len(rows) > limit else None)

    @get("/v1/backend/devices/{device_id:str}", tags=["backend"], dependencies=backend_auth)
    async def backend_device(device_id: FromPath[str], backend: CallingBackend, runtime: Runtime) -> DevicePublicKeys:
        """One active device's public keys."""
        del backend
        device = await runtime.store.get_device(device_id_of(device_id))
        if device is None or device.revoked:
            raise NotFoundError(f"no active device {device_id!r}", kind="device", key=device_id)
        return DevicePublicKeys(
            device_id=device.device_id, signing_key=b64(device.signing_key), encryption_key=b64(device.encryption_key)
        )

    @post(
        "/v1/backend/grants",
        status_code=HTTP_201_CREATED,
        tags=["backend"],
        dependencies=backend_auth,
        cache_control=no_store,
    )
    async def backend_grant(
        data: JSONBody[BackendGrantRequest], backend: CallingBackend, runtime: Runtime
    ) -> BackendGrantResponse:
        """A grant for the calling support backend's key pair over the named devices."""
        return await _grant(runtime, backend, data)

    return [
        create_backend,
        list_backends,
        get_backend,
        rotate_backend,
        delete_backend,
        backend_devices,
        backend_device,
        backend_grant,
    ]
