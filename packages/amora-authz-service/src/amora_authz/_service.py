"""The service's decisions, independent of HTTP: sessions, grants, devices, links.

Every method takes already-validated token claims; the HTTP layer (``_app``) only
parses requests and renders answers. The database is updated first, then the brokers
are reconciled for the names the change touched.

Fail closed: a change that takes access away (logout, unlink, revocation) is reported
done only once every configured broker holds it; until then the call raises
:class:`ChangePendingError` (the fleet keeps retrying), and repeating it answers the
same until the brokers caught up. A session is handed out only once its broker
credential exists on the primary broker.

Token mode (``tokens`` given): a session's broker password is a signed token carrying its
ACL (`amora_authz._brokertoken`), so creating one writes nothing to the brokers. Ending
sessions early (logout, eviction, link, unlink, device revocation) or by expiry deletes them
with a revocation each (`Store.end_sessions`) that every broker must hold, fail closed as a
deletion is in dynsec mode. Link and unlink end the user's sessions because their tokens
carry the old device list; apps log in again when the broker refuses the old token.

Registering and revoking devices (their certificates and the CRL) is
`amora_authz._service_devices`, a mixin of :class:`AuthzService`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from typing import TYPE_CHECKING

import msgspec

from amora_authz._desired import scope_for_link, scope_for_session
from amora_authz._dynsec import Scope
from amora_authz._errors import (
    AuthzError,
    BrokerError,
    ConfigError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from amora_authz._inputs import device_id_of, session_keys, user_id_of
from amora_authz._pending import PendingChanges
from amora_authz._revocations import REVOCATION_MARGIN_S
from amora_authz._service_devices import DeviceDecisions
from amora_authz._store import Certificate, Device, Session
from amora_protocol import (
    SESSION_ID_PREFIX,
    AuthzPublicKey,
    DevicePublicKeys,
    Grant,
    Right,
    SigningKey,
    issue_grant,
    now_ms,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import structlog

    from amora_authz._brokertoken import BrokerTokenKey
    from amora_authz._ca import DeviceCA
    from amora_authz._fleet import BrokerFleet, CheckReport
    from amora_authz._jwt import Claims
    from amora_authz._sessionlists import SessionListPublisher
    from amora_authz._store import Store

__all__ = [
    "AuthzService",
    "SessionIssued",
    "b64",
    "session_password",
]

_PASSWORD_DOMAIN = b"amora-session-password-v1\x00"
_NO_CAP = 2**31  # `open_session` evicts nobody: token mode ends sessions beyond the cap itself


def b64(raw: bytes) -> str:
    """Standard base64 text of ``raw`` (the API's encoding of keys and grants)."""
    return base64.b64encode(raw).decode("ascii")


def session_password(secret: bytes, session_id: str) -> str:
    """Derive a session's broker password (never stored: reconciliation re-derives it)."""
    mac = hmac.new(secret, _PASSWORD_DOMAIN + session_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


class SessionIssued(msgspec.Struct, frozen=True, kw_only=True):
    """What a session creation or refresh returns (besides the broker credential)."""

    session: Session
    password: str
    grant: bytes
    devices: tuple[Device, ...]


class AuthzService(DeviceDecisions):
    """Sessions, grants, devices and links, with broker reconciliation after each change."""

    def __init__(  # noqa: PLR0913 - the service's collaborators, all keyword-only
        self,
        *,
        store: Store,
        fleet: BrokerFleet,
        signing_keys: Sequence[SigningKey],
        session_secret: bytes,
        logger: structlog.typing.FilteringBoundLogger,
        session_ttl_s: int = 3600,
        cap_session_to_token: bool = False,
        max_sessions_per_user: int = 20,
        admin_role: str = "amora-admin",
        ca: DeviceCA | None = None,
        crl_reload_command: Sequence[str] = (),
        on_crl_written: Callable[[Sequence[Certificate]], None] | None = None,
        clock_ms: Callable[[], int] = now_ms,
        retry_after_s: int = 1,
        session_lists: SessionListPublisher | None = None,
        on_sessions_expired: Callable[[int], None] | None = None,
        tokens: BrokerTokenKey | None = None,
    ) -> None:
        """Wire the service.

        Args:
            store: the database.
            fleet: the brokers to reconcile.
            signing_keys: grant-signing keys; the first signs, all are published.
            session_secret: HMAC key for session broker passwords (32+ bytes).
            logger: structured logger.
            session_ttl_s: session and grant lifetime.
            cap_session_to_token: never let a session outlive its JWT.
            max_sessions_per_user: live sessions a user may hold; creating one more
                ends the oldest (apps that never log out must not grow the broker's
                account list without bound).
            admin_role: role claim value that grants the admin API.
            ca: the device CA (None: CSRs are refused and no CRL is written).
            crl_reload_command: argv run after the CRL changes (tells brokers to reload).
            on_crl_written: called with the revoked certificates after the CRL is
                rewritten (tests, embedding).
            clock_ms: wall clock in ms.
            retry_after_s: the ``Retry-After`` of a pending access change (about the
                fleet's retry interval).
            session_lists: publishes each device's signed session list after every change
                (revocation that reaches the device); None publishes nothing.
            on_sessions_expired: called with the number of sessions each expiry sweep
                removed (metrics).
            tokens: token mode: the key signing broker tokens (sessions are then no
                dynsec clients; the fleet must be in token mode too). None: dynsec mode.

        Raises:
            ConfigError: no signing key, or a short session secret.
        """
        if not signing_keys:
            raise ConfigError("at least one grant-signing key is required")
        if len(session_secret) < 32:
            raise ConfigError("the session secret must be at least 32 bytes")
        self.store = store
        self.fleet = fleet
        self.signing_keys = tuple(signing_keys)
        self._secret = session_secret
        self._log = logger
        self.session_ttl_s = session_ttl_s
        self.cap_session_to_token = cap_session_to_token
        self.max_sessions_per_user = max(1, max_sessions_per_user)
        self.admin_role = admin_role
        self.ca = ca
        self._crl_reload_command = tuple(crl_reload_command)
        self._on_crl_written = on_crl_written
        self._clock_ms = clock_ms
        self._pending = PendingChanges(fleet, retry_after_s=retry_after_s)
        self.session_lists = session_lists
        self._on_sessions_expired = on_sessions_expired
        self.tokens = tokens

    # -- helpers -------------------------------------------------------------------

    async def _sessions_changed(self, *, users: Sequence[str] = (), devices: Sequence[str] = ()) -> None:
        """Tell the touched devices which sessions they may obey now (see `_sessionlists`)."""
        if self.session_lists is not None:
            await self.session_lists.publish(users=users, devices=devices)

    def password_for(self, session_id: str) -> str:
        """The broker password of a session (dynsec mode)."""
        return session_password(self._secret, session_id)

    def _credential(self, session: Session, devices: Sequence[Device], now_ms: int) -> str:
        """The session's broker password: derived (dynsec mode) or a fresh token (token mode)."""
        if self.tokens is None:
            return self.password_for(session.session_id)
        return self.tokens.issue(
            subject=session.user_sub,
            username=session.session_id,
            client_id=session.session_id,
            devices=[d.device_id for d in devices],
            issued_at_s=now_ms // 1000,
            expires_at_s=session.expires_at_ms // 1000,
        )

    async def _end_sessions(
        self, *, session_ids: Sequence[str] = (), users: Sequence[str] = (), expired_at_ms: int | None = None
    ) -> Scope:
        """Token mode: end sessions with a revocation each; return the scope every broker must hold."""
        ended = await self.store.end_sessions(
            session_ids=session_ids,
            users=users,
            expired_at_ms=expired_at_ms,
            margin_s=REVOCATION_MARGIN_S,
            at_ms=self._clock_ms(),
        )
        if ended:
            self._log.info("session.revoked", count=len(ended), sessions=sorted(ended)[:20])
        return Scope(revoked=frozenset(ended))

    def authz_keys(self) -> tuple[AuthzPublicKey, ...]:
        """The grant-signing public keys (all of them, during a rotation)."""
        return tuple(AuthzPublicKey(kid=k.kid, public_key=b64(k.public_key.raw)) for k in self.signing_keys)

    def require_admin(self, claims: Claims) -> None:
        """Raise unless the token carries the admin role.

        Raises:
            PermissionDeniedError: it does not.
        """
        if not claims.has_role(self.admin_role):
            raise PermissionDeniedError(f"the admin API needs the role {self.admin_role!r}", code="not_admin")

    async def _active_devices(self, user_sub: str) -> tuple[Device, ...]:
        return tuple((await self.store.active_devices_of_users([user_sub])).get(user_sub, ()))

    def _grant(self, session: Session, devices: Sequence[Device], now_ms: int) -> bytes:
        grant = Grant(
            grant_id=str(uuid.uuid4()),
            subject=session.user_sub,
            session_id=session.session_id,
            signing_key=session.signing_key,
            encryption_key=session.encryption_key,
            devices=tuple(d.device_id for d in devices),
            rights=(Right.WATCH, Right.CONTROL),
            issued_at_ms=now_ms,
            expires_at_ms=session.expires_at_ms,
        )
        return issue_grant(grant, self.signing_keys[0])

    def _expiry(self, claims: Claims, now_ms: int) -> int:
        expires = now_ms + self.session_ttl_s * 1000
        if self.cap_session_to_token:
            expires = min(expires, claims.expires_at * 1000)
        return expires

    async def _own_session(self, claims: Claims, session_id: str) -> Session:
        session = await self.store.get_session(session_id)
        if session is None or session.user_sub != claims.subject:
            # Someone else's session is reported as absent: ids are not to be probed.
            raise NotFoundError(f"session {session_id!r} does not exist", kind="session", key=session_id)
        return session

    # -- sessions ------------------------------------------------------------------

    async def create_session(
        self,
        claims: Claims,
        *,
        signing_key: str,
        encryption_key: str,
        client_name: str | None = None,
    ) -> SessionIssued:
        """Create a session for the token's user: broker credential and grant.

        Raises:
            InvalidInputError: a key is malformed.
        """
        user_id_of(claims.subject, what="token subject")
        raw_sign, raw_enc = session_keys(signing_key, encryption_key)
        now = self._clock_ms()
        session = Session(
            session_id=SESSION_ID_PREFIX + secrets.token_hex(16),
            user_sub=claims.subject,
            client_name=client_name,
            signing_key=raw_sign,
            encryption_key=raw_enc,
            created_at_ms=now,
            expires_at_ms=self._expiry(claims, now),
        )
        outcome = None
        if self.tokens is not None:
            # Fail closed: a token the primary refuses (review F7) is a useless credential.
            self.fleet.raise_if_primary_refuses_tokens()
            # Nothing to create on the brokers: only the sessions beyond the cap end, each with
            # its revocation (until its own expiry: `_end_sessions`), so no eviction inside
            # `open_session`.
            _, found = await self.store.open_session(session, max_per_user=_NO_CAP)
            try:
                password = self._credential(session, found, now)
            except InvalidInputError:
                # Before anything else ends: the user keeps their sessions, this one is dropped.
                await self.store.delete_session(session.session_id)
                raise
            over = await self.store.sessions_beyond(session, max_per_user=self.max_sessions_per_user)
            scope = await self._end_sessions(session_ids=over) if over else Scope()
            ended = sorted(scope.revoked)
            if ended:
                outcome = await self.fleet.apply(scope)
        else:
            # One transaction: the row, the eviction of the oldest beyond the cap, the devices.
            ended, found = await self.store.open_session(session, max_per_user=self.max_sessions_per_user)
            password = self.password_for(session.session_id)
            scope = scope_for_session(session.session_id, claims.subject, (d.device_id for d in found))
            outcome = await self.fleet.apply(scope | Scope(clients=frozenset(ended)))
        devices = tuple(found)
        if outcome is not None and not outcome.on_primary:
            # A credential that does not exist on the primary is useless to the app and
            # would appear later behind its back: drop it (the other brokers follow).
            await self.store.delete_session(session.session_id)
            await self.fleet.apply(scope)
            what = (
                "the sessions this login ends could not be revoked"
                if self.tokens is not None
                else "the session's broker credential could not be created"
            )
            raise BrokerError(
                f"{what} on the primary broker {outcome.primary}; retry later",
                broker=outcome.primary or "*",
                code="broker_unavailable",
            )
        # The devices are known: their lists need no second read of the user's links.
        await self._sessions_changed(devices=[d.device_id for d in devices])
        if ended:
            self._log.info("session.evicted", user=claims.subject, sessions=ended)
        self._log.info(
            "session.created",
            session_id=session.session_id,
            user=claims.subject,
            devices=len(devices),
        )
        return SessionIssued(
            session=session,
            password=password,
            grant=self._grant(session, devices, now),
            devices=devices,
        )

    async def refresh_session(self, claims: Claims, session_id: str) -> SessionIssued:
        """Extend a live session and issue a fresh grant (and in token mode a fresh broker token).

        In dynsec mode the broker credential stays; in token mode the new token carries the
        new expiry and the current devices (same username and client id).

        Raises:
            NotFoundError: no such live session for this user.
        """
        session = await self._own_session(claims, session_id)
        now = self._clock_ms()
        if session.expires_at_ms <= now:
            raise NotFoundError(f"session {session_id!r} has expired", kind="session", key=session_id)
        expires = max(self._expiry(claims, now), session.expires_at_ms)
        await self.store.extend_session(session_id, expires_at_ms=expires)
        session = msgspec.structs.replace(session, expires_at_ms=expires)
        devices = await self._active_devices(claims.subject)
        self._log.info("session.refreshed", session_id=session_id, user=claims.subject)
        return SessionIssued(
            session=session,
            password=self._credential(session, devices, now),
            grant=self._grant(session, devices, now),
            devices=devices,
        )

    async def delete_session(self, claims: Claims, session_id: str) -> None:
        """Log out: remove the broker credential, which also kicks a live connection.

        Raises:
            NotFoundError: no such session for this user.
            ChangePendingError: a broker still holds the credential (retrying).
        """
        key = f"logout:{claims.subject}:{session_id}"
        session = await self.store.get_session(session_id)
        if session is None and self._pending.repeat(key) is not None:
            return
        session = await self._own_session(claims, session_id)
        if self.tokens is not None:
            scope = await self._end_sessions(session_ids=[session_id])
        else:
            await self.store.delete_session(session_id)
            scope = scope_for_session(session_id, session.user_sub)
        outcome = await self.fleet.apply(scope)
        await self._sessions_changed(users=[session.user_sub])
        self._log.info("session.deleted", session_id=session_id, user=claims.subject, behind=outcome.behind)
        self._pending.settle(key, scope, outcome)

    async def expire_sessions(self) -> list[str]:
        """Delete expired sessions and their broker clients (token mode: revoke them); return their ids.

        Token mode: the plugin does not re-check ``exp`` on a live connection, so an expired
        session's connection is kicked by its revocation; revocations past their ``until``
        are dropped from the database here too.
        """
        now = self._clock_ms()
        if self.tokens is not None:
            # A revocation past its `until` is dropped only once every broker acknowledged
            # it: one that missed it still holds the ended session's live connection (F4).
            if not self.fleet.revocations_owed():
                await self.store.purge_revocations(now_s=now // 1000)
            users = await self.store.end_sessions(expired_at_ms=now, margin_s=REVOCATION_MARGIN_S, at_ms=now)
            expired, scope = users, Scope(revoked=frozenset(users))
        else:
            expired = await self.store.delete_expired_sessions(now_ms=now)
            scope = Scope(clients=frozenset(expired))
        if expired:
            await self.fleet.apply(scope)
            # The devices of those users drop the sessions from their lists now, not at the
            # next full pass (which no longer runs every interval: docs/decisions/0013).
            await self._sessions_changed(users=sorted(set(expired.values())))
            self._log.info("session.expired", count=len(expired), sessions=sorted(expired)[:20])
            if self._on_sessions_expired is not None:
                self._on_sessions_expired(len(expired))
        return sorted(expired)

    # -- device keys ---------------------------------------------------------------

    async def device_keys(self, claims: Claims, device_id: str) -> DevicePublicKeys:
        """A device's public keys, for its users and admins.

        Raises:
            NotFoundError: no such active device, or the caller is not linked to it.
        """
        device_id = device_id_of(device_id)
        if not claims.has_role(self.admin_role):
            users = await self.store.users_of_device(device_id)
            if claims.subject not in users:
                raise NotFoundError(f"device {device_id!r} is not linked to you", kind="device", key=device_id)
        device = await self.store.require_device(device_id)
        if device.revoked:
            raise NotFoundError(f"device {device_id!r} is revoked", kind="device", key=device_id)
        return DevicePublicKeys(
            device_id=device_id, signing_key=b64(device.signing_key), encryption_key=b64(device.encryption_key)
        )

    # -- links ---------------------------------------------------------------------

    async def link(self, claims: Claims, user_sub: str, device_id: str) -> bool:
        """Let ``user_sub`` use ``device_id`` (admin only); return whether it is new.

        Raises:
            PermissionDeniedError: the caller is not an admin.
            NotFoundError: no such device.
            ConflictError: the device is revoked.
            InvalidInputError: the user or device id is invalid or reserved.
        """
        self.require_admin(claims)
        user_sub = user_id_of(user_sub)
        device_id = device_id_of(device_id)
        created = await self.store.link(user_sub, device_id, at_ms=self._clock_ms())
        scope = scope_for_link(user_sub, device_id)
        if self.tokens is not None and created:
            # The user's tokens lack the new device: their apps log in again to get it.
            scope |= await self._end_sessions(users=[user_sub])
        await self.fleet.apply(scope)
        await self._sessions_changed(users=[user_sub] if scope.revoked else [], devices=[device_id])
        self._log.info("link.created", user=user_sub, device_id=device_id, new=created)
        return created

    async def unlink(self, claims: Claims, user_sub: str, device_id: str) -> None:
        """Remove ``user_sub``'s access to ``device_id``; live subscriptions are cut.

        Raises:
            PermissionDeniedError: the caller is not an admin.
            NotFoundError: there was no such link.
            InvalidInputError: the user or device id is invalid or reserved.
            ChangePendingError: a broker still grants the access (retrying).
        """
        self.require_admin(claims)
        user_sub = user_id_of(user_sub)
        device_id = device_id_of(device_id)
        key = f"unlink:{user_sub}:{device_id}"
        if not await self.store.unlink(user_sub, device_id):
            if self._pending.repeat(key) is not None:
                return
            raise NotFoundError(
                f"user {user_sub!r} is not linked to device {device_id!r}",
                kind="link",
                key=f"{user_sub}/{device_id}",
            )
        scope = scope_for_link(user_sub, device_id)
        if self.tokens is not None:
            # Their tokens name the device's topics until they expire.
            scope |= await self._end_sessions(users=[user_sub])
        outcome = await self.fleet.apply(scope)
        await self._sessions_changed(users=[user_sub] if scope.revoked else [], devices=[device_id])
        self._log.info("link.removed", user=user_sub, device_id=device_id, behind=outcome.behind)
        self._pending.settle(key, scope, outcome)

    async def devices_of_user(self, claims: Claims, user_sub: str) -> list[str]:
        """A user's devices (admins: anyone's; users: their own)."""
        if claims.subject != user_sub:
            self.require_admin(claims)
        return [d.device_id for d in await self._active_devices(user_sub)]

    async def users_of_device(self, claims: Claims, device_id: str) -> list[str]:
        """A device's users (admin only).

        Raises:
            PermissionDeniedError: the caller is not an admin.
            NotFoundError: no such device.
        """
        self.require_admin(claims)
        device_id = device_id_of(device_id)
        await self.store.require_device(device_id)
        return await self.store.users_of_device(device_id)

    async def periodic_pass(self) -> list[CheckReport]:
        """The periodic pass: sweep expired sessions, check every broker cheaply, repair what differs.

        A full pass runs only on a broker that needs one (`BrokerFleet.check_all`); the
        session lists are republished in full only where a broker may have lost them.
        """
        try:
            await self.expire_sessions()
        except AuthzError as exc:
            self._log.warning("session.expiry_failed", error=exc.message)
        reports = await self.fleet.check_all()
        if self.session_lists is not None and (any(r.full for r in reports) or self.session_lists.stale()):
            await self.session_lists.publish_all()
        return reports

    async def reconcile(self) -> dict[str, int]:
        """Run a full reconcile pass on every broker (expired sessions swept first)."""
        try:
            await self.expire_sessions()
        except AuthzError as exc:
            self._log.warning("session.expiry_failed", error=exc.message)
        counts = await self.fleet.reconcile_all()
        if self.session_lists is not None:
            await self.session_lists.publish_all()
        return counts
