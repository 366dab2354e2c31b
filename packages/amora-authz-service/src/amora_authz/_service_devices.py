"""The service's device decisions: registration (with its certificate), revocation, the CRL.

A mixin of `amora_authz._service.AuthzService` (it uses the service's store, fleet, CA,
pending changes and session lists); kept apart because a device's life is one job of its own,
apart from sessions and links: registering one answers its CSR from the device CA, revoking
one rewrites the CRL before its broker access goes, fail closed like every change that takes
access away.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import msgspec

from amora_authz._desired import scope_for_device
from amora_authz._errors import ConflictError, InvalidInputError
from amora_authz._inputs import device_id_of, session_keys
from amora_authz._store import Certificate, Device
from amora_protocol import SERVICE_ACCOUNT_PREFIX

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import structlog

    from amora_authz._brokertoken import BrokerTokenKey
    from amora_authz._ca import DeviceCA
    from amora_authz._dynsec import Scope
    from amora_authz._fleet import BrokerFleet
    from amora_authz._jwt import Claims
    from amora_authz._pending import PendingChanges
    from amora_authz._store import Store

__all__ = ["DeviceDecisions", "DeviceRegistered"]


class DeviceRegistered(msgspec.Struct, frozen=True, kw_only=True):
    """A registered device and its certificate (when a CSR was sent)."""

    device: Device
    certificate_pem: bytes | None
    serial: int | None


class DeviceDecisions:
    """Device registration and revocation; the state they read is set up by `AuthzService.__init__`."""

    store: Store
    fleet: BrokerFleet
    ca: DeviceCA | None
    admin_role: str
    tokens: BrokerTokenKey | None
    _log: structlog.typing.FilteringBoundLogger
    _clock_ms: Callable[[], int]
    _pending: PendingChanges
    _crl_reload_command: tuple[str, ...]
    _on_crl_written: Callable[[Sequence[Certificate]], None] | None

    def require_admin(self, claims: Claims) -> None:
        raise NotImplementedError  # `AuthzService` checks the role

    async def _sessions_changed(self, *, users: Sequence[str] = (), devices: Sequence[str] = ()) -> None:
        raise NotImplementedError  # `AuthzService` publishes the session lists

    async def _end_sessions(
        self, *, session_ids: Sequence[str] = (), users: Sequence[str] = (), expired_at_ms: int | None = None
    ) -> Scope:
        raise NotImplementedError  # `AuthzService` ends sessions (token mode)

    async def register_device(
        self,
        claims: Claims,
        *,
        device_id: str,
        signing_key: str,
        encryption_key: str,
        csr_pem: str | None = None,
    ) -> DeviceRegistered:
        """Register a device, answering its CSR with a client certificate.

        Raises:
            PermissionDeniedError: the caller is not an admin.
            InvalidInputError: bad id, key or CSR, or a CSR without a configured CA.
            ConflictError: the device id is taken (``device_exists``, ``device_revoked``),
                or a broker holds an account of that name (``name_taken_on_broker``).
        """
        self.require_admin(claims)
        device_id = device_id_of(device_id)
        raw_sign, raw_enc = session_keys(signing_key, encryption_key)
        taken = await self.fleet.taken_names(scope_for_device(device_id))
        if taken:
            # The device's certificate CN becomes its broker username: a device named
            # after an existing account would log in as that account.
            raise ConflictError(
                f"device id {device_id!r} is taken on a broker by objects this service does not own "
                f"({', '.join(taken)}); choose another id (service accounts belong under "
                f"{SERVICE_ACCOUNT_PREFIX!r})",
                code="name_taken_on_broker",
            )
        now = self._clock_ms()
        issued = None
        if csr_pem is not None:
            if self.ca is None:
                raise InvalidInputError("this service has no device CA configured", code="no_device_ca")
            issued = self.ca.sign_csr(
                csr_pem.encode(),
                device_id=device_id,
                now=dt.datetime.fromtimestamp(now / 1000, tz=dt.UTC),
            )
        device = Device(
            device_id=device_id,
            signing_key=raw_sign,
            encryption_key=raw_enc,
            created_at_ms=now,
        )
        await self.store.add_device(device)
        if issued is not None:
            await self.store.add_certificate(
                Certificate(
                    serial=issued.serial,
                    device_id=device_id,
                    issued_at_ms=now,
                    not_after_ms=issued.not_after_ms,
                )
            )
        await self.fleet.apply(scope_for_device(device_id))
        await self._sessions_changed(devices=[device_id])
        self._log.info("device.registered", device_id=device_id, by=claims.subject)
        return DeviceRegistered(
            device=device,
            certificate_pem=None if issued is None else issued.pem,
            serial=None if issued is None else issued.serial,
        )

    async def revoke_device(self, claims: Claims, device_id: str) -> list[int]:
        """Revoke a device: CRL, broker client deleted (kicked), links dropped.

        Returns:
            The serials of the certificates revoked.

        Raises:
            PermissionDeniedError: the caller is not an admin.
            NotFoundError: no such device.
            ConflictError: already revoked.
            InvalidInputError: the device id is invalid or reserved.
            ChangePendingError: a broker still holds the device's access (retrying).
        """
        self.require_admin(claims)
        device_id = device_id_of(device_id)
        key = f"revoke:{device_id}"
        existing = await self.store.get_device(device_id)
        if existing is not None and existing.revoked:
            repeated = self._pending.repeat(key)
            if repeated is not None:
                return repeated
        users = await self.store.users_of_device(device_id)
        serials = await self.store.revoke_device(device_id, at_ms=self._clock_ms())
        # An empty list while the device is still connected: it refuses every grant even if
        # a broker keeps it online (a standby behind, a CRL not yet reloaded).
        await self._sessions_changed(devices=[device_id])
        # CRL first: once the client is deleted the device reconnects at once, and the
        # new handshake must already meet the CRL.
        await self.write_crl()
        scope = scope_for_device(device_id, users)
        if self.tokens is not None:
            # Their tokens name the device's topics until they expire.
            scope |= await self._end_sessions(users=users)
            await self._sessions_changed(users=users)
        outcome = await self.fleet.apply(scope)
        self._log.warning(
            "device.revoked", device_id=device_id, by=claims.subject, serials=len(serials), behind=outcome.behind
        )
        self._pending.settle(key, scope, outcome, serials)
        return serials

    async def write_crl(self) -> None:
        """Rewrite the device CRL from the database and ask brokers to reload it."""
        if self.ca is None:
            return
        revoked = await self.store.revoked_certificates()
        now = dt.datetime.fromtimestamp(self._clock_ms() / 1000, tz=dt.UTC)
        self.ca.write_crl(revoked, now=now)
        if self._crl_reload_command:
            process = await asyncio.create_subprocess_exec(*self._crl_reload_command)
            code = await process.wait()
            if code != 0:
                self._log.error("crl.reload_failed", exit_code=code)
        if self._on_crl_written is not None:
            self._on_crl_written(revoked)
