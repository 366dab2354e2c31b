"""Backend identities: named services with a broker credential and one role from a fixed set.

A backend (``analytics``, ``support`` or ``ingest``, see `amora_protocol.BackendRole`) gets one
password account per replica slot, ``svc.backend.{name}.{n}`` with the client id bound to the
same name, all holding the role ``svc.backend.{name}`` (`amora_protocol.backend_acls`). The
accounts live in the reserved service namespace and carry the ownership marker like every
object this service creates, so the reconciler creates, repairs and deletes them with the
rest and never adopts a foreign object of the same name (the name is refused with ``409
name_taken_on_broker`` instead). They have passwords and no certificate: the device listener
(certificate CN = username) cannot take them.

The password is derived (HMAC of the session secret, the name and a *generation*), never
stored: a full pass re-derives it, and rotating it bumps the generation. The same password
authenticates the backend to this service (HTTP Basic, any of its account names) for the
device keys it verifies states with and, for ``support`` backends, for grants.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import TYPE_CHECKING, Any, Final

import msgspec
import sqlalchemy as sa

from amora_authz._dynsec import AclSpec, ClientSpec, DynsecState, RoleSpec, Scope
from amora_authz._errors import AuthenticationError, ConfigError, ConflictError, InvalidInputError, NotFoundError
from amora_authz._pending import PendingChanges
from amora_authz._schema import metadata
from amora_protocol import (
    MAX_BACKEND_REPLICAS,
    BackendRole,
    backend_account,
    backend_acls,
    backend_replica_account,
    validate_backend_name,
)

if TYPE_CHECKING:
    from amora_authz._fleet import BrokerFleet
    from amora_authz._sessionlists import SessionListPublisher
    from amora_authz._store import Store

__all__ = [
    "Backend",
    "BackendRegistry",
    "backend_objects",
    "backend_password",
    "backends",
]

_PASSWORD_DOMAIN: Final = b"amora-backend-password-v1\x00"

backends = sa.Table(
    "backends",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("replicas", sa.Integer, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("rotated_at_ms", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
)


class Backend(msgspec.Struct, frozen=True, kw_only=True):
    """A backend identity as stored.

    Attributes:
        name: its name (also its share group).
        role: what it may do.
        replicas: how many replica slots (broker accounts) it has.
        generation: bumped by each credential rotation (the password derives from it).
        created_at_ms: creation time.
        rotated_at_ms: last rotation (creation time until the first).
        created_by: the admin who created it.
    """

    name: str
    role: BackendRole
    replicas: int
    generation: int
    created_at_ms: int
    rotated_at_ms: int
    created_by: str

    @property
    def account(self) -> str:
        """``svc.backend.{name}``: the role's name, and the session id of its grants."""
        return backend_account(self.name)

    @property
    def accounts(self) -> tuple[str, ...]:
        """The broker usernames (= client ids) of its replica slots."""
        return tuple(backend_replica_account(self.name, n) for n in range(1, self.replicas + 1))

    def scope(self, replicas: int | None = None) -> Scope:
        """The broker names it owns (``replicas`` slots; all slots that could exist when None)."""
        count = MAX_BACKEND_REPLICAS if replicas is None else replicas
        clients = frozenset(backend_replica_account(self.name, n) for n in range(1, count + 1))
        return Scope(roles=frozenset({self.account}), clients=clients)


def backend_password(secret: bytes, name: str, generation: int) -> str:
    """Derive a backend's password (never stored; rotation changes ``generation``)."""
    message = _PASSWORD_DOMAIN + f"{name}\x00{generation}".encode()
    mac = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def backend_objects(backend: Backend, password: str) -> DynsecState:
    """The role and the replica accounts ``backend`` must have on every broker."""
    state = DynsecState()
    role = backend.account
    acls = frozenset(AclSpec(a.acltype, a.topic, a.allow) for a in backend_acls(backend.name, backend.role))
    state.roles[role] = RoleSpec(name=role, acls=acls)
    for account in backend.accounts:
        state.clients[account] = ClientSpec(
            username=account,
            clientid=account,
            password=password,
            roles=frozenset({role}),
            password_tag=f"generation {backend.generation}",
        )
    return state


def _backend(row: sa.Row[Any]) -> Backend:
    return Backend(
        name=row.name,
        role=BackendRole(row.role),
        replicas=int(row.replicas),
        generation=int(row.generation),
        created_at_ms=int(row.created_at_ms),
        rotated_at_ms=int(row.rotated_at_ms),
        created_by=row.created_by,
    )


def name_of(value: str) -> str:
    """Return ``value`` as a backend name.

    Raises:
        InvalidInputError: ``invalid_backend_name``.
    """
    try:
        return validate_backend_name(value)
    except ValueError as exc:
        raise InvalidInputError(str(exc), code="invalid_backend_name") from exc


def role_of(value: str) -> BackendRole:
    """Return ``value`` as a backend role.

    Raises:
        InvalidInputError: ``invalid_backend_role``.
    """
    try:
        return BackendRole(value)
    except ValueError:
        roles = ", ".join(r.value for r in BackendRole)
        raise InvalidInputError(
            f"unknown backend role {value!r}: use one of {roles}", code="invalid_backend_role"
        ) from None


def replicas_of(value: int) -> int:
    """Return ``value`` as a replica count.

    Raises:
        InvalidInputError: ``invalid_replicas``.
    """
    if not 1 <= value <= MAX_BACKEND_REPLICAS:
        msg = f"replicas must be 1..{MAX_BACKEND_REPLICAS} (one broker account per replica), not {value}"
        raise InvalidInputError(msg, code="invalid_replicas")
    return value


class BackendRegistry:
    """Backends in the database, their broker objects, and their HTTP authentication.

    Args:
        store: the database.
        secret: the session secret (backend passwords derive from it).
    """

    def __init__(self, store: Store, *, secret: bytes) -> None:
        """Wire the registry (`attach` the brokers before changing anything)."""
        self._store = store
        self._secret = secret
        self._fleet: BrokerFleet | None = None
        self._pending: PendingChanges | None = None
        self._session_lists: SessionListPublisher | None = None

    def attach(self, fleet: BrokerFleet, *, session_lists: SessionListPublisher | None, retry_after_s: int) -> None:
        """Give the registry the brokers it reconciles after each change."""
        self._fleet = fleet
        self._pending = PendingChanges(fleet, retry_after_s=retry_after_s)
        self._session_lists = session_lists

    def _brokers(self) -> tuple[BrokerFleet, PendingChanges]:
        if self._fleet is None or self._pending is None:
            raise ConfigError("the backend registry has no brokers attached (a wiring bug)")
        return self._fleet, self._pending

    async def create(self, *, name: str, role: str, replicas: int, by: str, at_ms: int) -> Backend:
        """Create a backend and its broker accounts on every broker.

        Raises:
            InvalidInputError: bad name, role or replica count.
            ConflictError: ``backend_exists``, or ``name_taken_on_broker`` when a broker
                holds one of its account names as an object this service does not own.
        """
        fleet, _ = self._brokers()
        backend = Backend(
            name=name_of(name),
            role=role_of(role),
            replicas=replicas_of(replicas),
            generation=1,
            created_at_ms=at_ms,
            rotated_at_ms=at_ms,
            created_by=by,
        )
        taken = await fleet.taken_names(backend.scope())
        if taken:
            raise ConflictError(
                f"backend {name!r} would use broker names held by objects this service does not own "
                f"({', '.join(taken)}); choose another name or remove those objects",
                code="name_taken_on_broker",
            )
        await self.add(backend)
        await fleet.apply(backend.scope())
        if backend.role is BackendRole.SUPPORT:
            await self._republish_session_lists()
        return backend

    async def rotate_credential(self, name: str, *, at_ms: int) -> Backend:
        """Give the backend a new password; the old one stops working on every broker.

        Raises:
            NotFoundError: no such backend.
            ChangePendingError: a broker still accepts the old password (retrying).
        """
        fleet, pending = self._brokers()
        rotated = await self.rotate(name_of(name), at_ms=at_ms)
        scope = rotated.scope()
        pending.settle(f"backend-rotate:{name}:{rotated.generation}", scope, await fleet.apply(scope))
        return rotated

    async def delete(self, name: str) -> None:
        """Delete the backend, its broker accounts (connections kicked) and, for support, its grants.

        Raises:
            NotFoundError: no such backend (and no deletion of it pending).
            ChangePendingError: a broker still holds its accounts (retrying).
        """
        fleet, pending = self._brokers()
        key = f"backend-delete:{name}"
        if await self.get(name) is None and pending.repeat(key) is not None:
            return
        backend = await self.remove(name_of(name))
        scope = backend.scope()
        outcome = await fleet.apply(scope)
        if backend.role is BackendRole.SUPPORT:
            await self._republish_session_lists()
        pending.settle(key, scope, outcome)

    async def _republish_session_lists(self) -> None:
        """Support backends are on every device's list: publish them all after a change."""
        if self._session_lists is not None:
            devices = [d.device_id for d in await self._store.list_devices()]
            await self._session_lists.publish(devices=devices)

    def password(self, backend: Backend) -> str:
        """The backend's current broker (and HTTP) password."""
        return backend_password(self._secret, backend.name, backend.generation)

    async def list(self) -> list[Backend]:
        """Every backend, by name."""
        rows = await self._store._rows(sa.select(backends).order_by(backends.c.name))  # noqa: SLF001 - the store's runner
        return [_backend(r) for r in rows]

    async def get(self, name: str) -> Backend | None:
        """One backend, or None."""
        rows = await self._store._rows(sa.select(backends).where(backends.c.name == name))  # noqa: SLF001
        return _backend(rows[0]) if rows else None

    async def require(self, name: str) -> Backend:
        """One backend.

        Raises:
            NotFoundError: ``backend_not_found``.
        """
        backend = await self.get(name)
        if backend is None:
            raise NotFoundError(f"no backend {name!r}; list them with GET /v1/admin/backends", kind="backend", key=name)
        return backend

    async def add(self, backend: Backend) -> None:
        """Store a new backend.

        Raises:
            ConflictError: ``backend_exists``.
        """
        statement = sa.insert(backends).values(msgspec.structs.asdict(backend) | {"role": backend.role.value})
        if await self.get(backend.name) is not None:
            raise ConflictError(
                f"backend {backend.name!r} exists; rotate its credential or delete it first",
                code="backend_exists",
            )
        await self._store._execute(statement)  # noqa: SLF001

    async def rotate(self, name: str, *, at_ms: int) -> Backend:
        """Bump the backend's generation (a new password).

        Raises:
            NotFoundError: no such backend.
        """
        backend = await self.require(name)
        rotated = msgspec.structs.replace(backend, generation=backend.generation + 1, rotated_at_ms=at_ms)
        await self._store._execute(  # noqa: SLF001
            sa.update(backends)
            .where(backends.c.name == name)
            .values(generation=rotated.generation, rotated_at_ms=at_ms)
        )
        return rotated

    async def remove(self, name: str) -> Backend:
        """Delete a backend; return what it was.

        Raises:
            NotFoundError: no such backend.
        """
        backend = await self.require(name)
        await self._store._execute(sa.delete(backends).where(backends.c.name == name))  # noqa: SLF001
        return backend

    async def desired(self, scope: Scope | None) -> DynsecState:
        """The broker objects of every backend (``scope`` None), or of those ``scope`` names."""
        state = DynsecState()
        prefix = backend_account("x")[:-1]  # "svc.backend."
        if scope is not None and not any(n.startswith(prefix) for n in (*scope.roles, *scope.clients)):
            return state  # a session, link or device change: no query (logins stay one statement)
        for backend in await self.list():
            if scope is not None and not _touches(backend, scope):
                continue
            objects = backend_objects(backend, self.password(backend))
            state.roles.update(objects.roles)
            state.clients.update(objects.clients)
        return state

    async def support_sessions(self) -> tuple[str, ...]:
        """The session ids of support backends' grants: on every device's session list."""
        return tuple(b.account for b in await self.list() if b.role is BackendRole.SUPPORT)

    async def authenticate(self, authorization: str | None) -> Backend:
        """The backend named by ``Authorization: Basic`` (any of its account names + password).

        Raises:
            AuthenticationError: missing or malformed header, unknown account, wrong password.
        """
        if not authorization:
            raise AuthenticationError(
                "backend endpoints need Authorization: Basic <svc.backend.NAME.N:password> (the credential "
                "from POST /v1/admin/backends)",
                code="missing_credential",
            )
        scheme, _, encoded = authorization.partition(" ")
        malformed = AuthenticationError(
            "expected Authorization: Basic base64(username:password)", code="missing_credential"
        )
        if scheme.lower() != "basic":
            raise malformed
        try:
            username, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise malformed from None
        name = _name_from_account(username)
        backend = None if name is None else await self.get(name)
        if backend is None or not hmac.compare_digest(password, self.password(backend)):
            # One answer for an unknown name and a wrong password: names are not to be probed.
            raise AuthenticationError(
                "unknown backend account or wrong password; use the latest password from "
                "POST /v1/admin/backends/{name}/rotate",
                code="invalid_credential",
            )
        return backend


def _touches(backend: Backend, scope: Scope) -> bool:
    full = backend.scope()
    return bool(full.roles & scope.roles or full.clients & scope.clients)


def _name_from_account(username: str) -> str | None:
    prefix = backend_account("x")[:-1]  # "svc.backend."
    if not username.startswith(prefix):
        return None
    rest = username[len(prefix) :]
    name, _, _replica = rest.partition(".")
    try:
        return validate_backend_name(name)
    except ValueError:
        return None


def merge(into: DynsecState, extra: DynsecState) -> DynsecState:
    """Add ``extra``'s roles and clients to ``into`` (names never overlap: ``svc.backend.`` is theirs)."""
    into.roles.update(extra.roles)
    into.clients.update(extra.clients)
    return into
