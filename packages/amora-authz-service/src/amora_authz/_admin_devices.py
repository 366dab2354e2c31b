"""Admin API: list devices (paged, filtered) and get one device.

``GET /v1/admin/devices?limit=&after=&prefix=&user=&revoked=`` pages by device id (keyset:
``after`` is the last id of the previous page, ``next`` says what to pass for the following
one), so a page costs the same at any depth and a device registered meanwhile is neither
skipped nor repeated. ``GET /v1/admin/devices/{id}`` adds the linked users and the
certificates. Read-only queries on the store's tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec
import sqlalchemy as sa
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, Parameter

from amora_authz._errors import NotFoundError
from amora_authz._jwt import Claims
from amora_authz._runtime import AuthzRuntime
from amora_authz._schema import certificates, devices, links
from amora_authz._service import b64

if TYPE_CHECKING:
    from litestar.di import Provide

__all__ = ["CertificateInfo", "DeviceInfo", "DevicePage", "admin_device_handlers"]

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 500

Runtime = NamedDependency[AuthzRuntime]
AdminClaims = NamedDependency[Claims]


class CertificateInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A certificate issued to the device (serial as decimal text)."""

    serial: str
    issued_at_ms: int
    not_after_ms: int
    revoked_at_ms: int | None


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A registered device; ``users`` and ``certificates`` only when one device is asked for."""

    device_id: str
    created_at_ms: int
    revoked_at_ms: int | None
    signing_key: str
    encryption_key: str
    users: list[str] | None = None
    certificates: list[CertificateInfo] | None = None


class DevicePage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of devices, by id; ``next`` is the ``after`` of the next page (None: last page)."""

    devices: list[DeviceInfo]
    next: str | None


def _info(row: sa.Row[Any]) -> DeviceInfo:
    return DeviceInfo(
        device_id=row.device_id,
        created_at_ms=row.created_at_ms,
        revoked_at_ms=row.revoked_at_ms,
        signing_key=row.signing_key,  # stored as base64 text
        encryption_key=row.encryption_key,
    )


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def admin_device_handlers(*, admin: dict[str, Provide]) -> list[Any]:
    """The two routes, with the app's admin dependency."""

    @get("/v1/admin/devices", tags=["admin"], dependencies=admin)
    async def list_devices(  # noqa: PLR0913 - one parameter per filter
        *,
        claims: AdminClaims,
        runtime: Runtime,
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
        after: Annotated[str | None, Parameter(max_length=64)] = None,
        prefix: Annotated[str | None, Parameter(max_length=64)] = None,
        user: Annotated[str | None, Parameter(max_length=256)] = None,
        revoked: FromQuery[bool | None] = None,
    ) -> DevicePage:
        """Registered devices by id, a page at a time; filters: id prefix, linked user, revoked."""
        runtime.service.require_admin(claims)
        query = sa.select(devices).order_by(devices.c.device_id).limit(limit + 1)
        if after is not None:
            query = query.where(devices.c.device_id > after)
        if prefix:
            query = query.where(devices.c.device_id.like(_like_prefix(prefix), escape="\\"))
        if user is not None:
            query = query.where(devices.c.device_id.in_(sa.select(links.c.device_id).where(links.c.user_sub == user)))
        if revoked is not None:
            query = query.where(devices.c.revoked_at_ms.is_not(None) if revoked else devices.c.revoked_at_ms.is_(None))
        rows = await runtime.store._rows(query)  # noqa: SLF001 - the store's query runner, shared by the package
        page = [_info(row) for row in rows[:limit]]
        return DevicePage(devices=page, next=page[-1].device_id if len(rows) > limit else None)

    @get("/v1/admin/devices/{device_id:str}", tags=["admin"], dependencies=admin)
    async def get_device(device_id: FromPath[str], claims: AdminClaims, runtime: Runtime) -> DeviceInfo:
        """One device: its keys, state, linked users and certificates."""
        runtime.service.require_admin(claims)
        device = await runtime.store.get_device(device_id)
        if device is None:
            raise NotFoundError(f"no device {device_id!r}", kind="device", key=device_id)
        certs = await runtime.store._rows(  # noqa: SLF001
            sa.select(certificates).where(certificates.c.device_id == device_id).order_by(certificates.c.issued_at_ms)
        )
        return DeviceInfo(
            device_id=device.device_id,
            created_at_ms=device.created_at_ms,
            revoked_at_ms=device.revoked_at_ms,
            signing_key=b64(device.signing_key),
            encryption_key=b64(device.encryption_key),
            users=sorted(await runtime.store.users_of_device(device_id)),
            certificates=[
                CertificateInfo(
                    serial=str(c.serial),
                    issued_at_ms=c.issued_at_ms,
                    not_after_ms=c.not_after_ms,
                    revoked_at_ms=c.revoked_at_ms,
                )
                for c in certs
            ],
        )

    return [list_devices, get_device]
