"""Broker reconciliation: make every configured broker's dynsec state match the database.

The desired state is computed from the store (`amora_authz._desired`; docs/architecture.md,
"Topics and their ACLs"). Default ACL: deny.

After each API change only the touched names are reconciled (a scope); a full pass runs
at start-up and periodically, which heals a broker that was down or lost its file.

Fail closed: every pass reports which brokers hold the change (:class:`ApplyOutcome`).
A broker that missed a change is *behind*: the names it missed are kept and retried
(:meth:`BrokerFleet.retry_pending`) until it holds them, and readiness fails meanwhile.
Names held on a broker by objects this service does not own (see
:func:`amora_authz._dynsec.foreign_names`) also keep it behind: they are never adopted.

Token mode (``tokens=True``): sessions are no dynsec clients; a scope's ``revoked`` usernames
are sent to each broker's ``amora_auth`` plugin (`amora_authz._revocations`) under the same
locks, with the same fail-closed bookkeeping, and a full pass also gives a broker every
revocation in force that it lacks and checks that it accepts the service's tokens
(`amora_authz._fleet_tokens`). Whether a broker persists what it is told is checked after
each pass (`amora_authz._fleet_persist`); the periodic check deciding when a full pass runs is
`amora_authz._fleet_check`.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

import msgspec

from amora_authz._control import DynsecClient
from amora_authz._desired import desired_state, restrict
from amora_authz._dynsec import (
    MANAGED,
    BrokerEndpoint,
    DynsecState,
    ForeignNames,
    GroupSpec,
    Scope,
    foreign_names,
    plan,
)
from amora_authz._errors import AuthzError, BrokerError
from amora_authz._fleet_check import CheckReport, PeriodicCheck
from amora_authz._fleet_persist import PersistenceCheck
from amora_authz._fleet_tokens import TokenRevocations
from amora_authz._store import Link
from amora_protocol import now_ms, user_group

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    import structlog

    from amora_authz._brokertoken import BrokerTokenKey
    from amora_authz._store import Store

__all__ = ["ApplyOutcome", "BrokerFleet", "BrokerStatus", "CheckReport"]


class BrokerStatus(msgspec.Struct, kw_only=True):
    """What the service knows about one broker (served by ``/readyz`` and metrics).

    Attributes:
        name: the broker's configured name.
        reachable: whether the last exchange succeeded.
        persisting: whether its dynsec file reflects what it was told (None: not
            checked, the file is not readable from here).
        last_error: the last failure, if any.
        last_full_reconcile_ms: when the last full pass finished.
        commands_applied: dynsec commands sent since start.
        revocations_sent: token mode: session revocations the broker acknowledged since start.
        revocations_failed: token mode: session revocations that did not reach it (retried).
        behind: whether the broker misses changes the database holds (a failed
            pass, a full pass still owed, or names taken by foreign objects).
        pending_names: how many role, group and client names wait for a retry.
        foreign: names the database wants that the broker holds as objects this
            service does not own (``client:amora-admin``); never adopted.
        token_refused: token mode: the broker refused the last full pass's probe token
            (`amora_authz._tokenprobe`): it would refuse every session's token too.
    """

    name: str
    reachable: bool = False
    persisting: bool | None = None
    last_error: str | None = None
    last_full_reconcile_ms: int | None = None
    commands_applied: int = 0
    revocations_sent: int = 0
    revocations_failed: int = 0
    behind: bool = True
    pending_names: int = 0
    foreign: list[str] = msgspec.field(default_factory=list)
    token_refused: bool = False


class ApplyOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """Which brokers hold a change after a pass.

    Attributes:
        applied: brokers that hold it (primary first, in configuration order).
        behind: brokers that do not (unreachable, refused a command, or a name is
            taken by a foreign object); the change is retried on them in the background.
        primary: the configured name of the first broker.
    """

    applied: tuple[str, ...]
    behind: tuple[str, ...]
    primary: str | None

    @property
    def complete(self) -> bool:
        """Every broker holds the change."""
        return not self.behind

    @property
    def on_primary(self) -> bool:
        """The primary broker holds the change (or there is no broker at all)."""
        return self.primary is None or self.primary in self.applied


def _scope_size(scope: Scope) -> int:
    return len(scope.roles) + len(scope.groups) + len(scope.clients) + len(scope.revoked)


def _minus(scope: Scope, done: Scope) -> Scope:
    return Scope(
        roles=scope.roles - done.roles,
        groups=scope.groups - done.groups,
        clients=scope.clients - done.clients,
        revoked=scope.revoked - done.revoked,
    )


def _foreign_scope(foreign: ForeignNames) -> Scope:
    return Scope(roles=foreign.roles, groups=foreign.groups, clients=foreign.clients)


class BrokerFleet(PeriodicCheck, TokenRevocations, PersistenceCheck):
    """Every configured broker, reconciled with the store."""

    def __init__(  # noqa: PLR0913 - collaborators, all optional ones keyword-only
        self,
        endpoints: Sequence[BrokerEndpoint],
        store: Store,
        *,
        password_for: Callable[[str], str],
        logger: structlog.typing.FilteringBoundLogger,
        clock_ms: Callable[[], int] = now_ms,
        timeout_s: float = 10.0,
        on_pass: Callable[..., None] | None = None,
        full_interval_s: float = 3600.0,
        settle_s: float = 2.0,
        extra_desired: Callable[[Scope | None], Awaitable[DynsecState]] | None = None,
        tokens: bool = False,
        token_key: BrokerTokenKey | None = None,
    ) -> None:
        """Create the fleet (no connection is made until the first reconcile).

        Args:
            endpoints: the brokers (primary, standby...).
            store: the source of truth.
            password_for: the broker password of a session id.
            logger: structured logger.
            clock_ms: wall clock in ms (session expiry).
            timeout_s: dynsec response timeout.
            on_pass: called after each pass on a broker as ``on_pass(name, full=, ok=)``
                (metrics).
            full_interval_s: a full pass runs on each broker about this often (jittered
                0.5x-1.5x) even when the cheap check finds nothing (`check_all`).
            settle_s: how long a cheap check that disagrees waits before looking again (a
                change between its database write and its broker pass), before a full pass.
            extra_desired: more objects every broker must hold, for a scope (all when None):
                the backend identities (`amora_authz._backends`), whose names never overlap
                the ones computed here.
            tokens: token mode: no session clients, user groups or ``user-device:`` roles;
                revocations go to each broker's ``amora_auth`` plugin.
            token_key: token mode: the key signing session tokens; each full pass then
                checks with a probe token that the broker accepts them.
        """
        self._store = store
        self._extra_desired = extra_desired
        self._password_for = password_for
        self._log = logger
        self._clock_ms = clock_ms
        self._on_pass = on_pass
        self.clients = [DynsecClient(e, logger=logger, timeout_s=timeout_s) for e in endpoints]
        self._tokens = tokens
        self._timeout_s = timeout_s
        self._init_token_mode(endpoints, logger=logger, timeout_s=timeout_s, tokens=tokens, token_key=token_key)
        self.status = {e.name: BrokerStatus(name=e.name) for e in endpoints}
        # Reconcile passes on one broker must not interleave: a scoped pass racing a
        # full pass could re-create what the other just deleted.
        self._locks = {e.name: asyncio.Lock() for e in endpoints}
        # What each broker missed: names to re-apply, and whether a full pass is owed
        # (start-up or a periodic pass failed there). Nothing is owed only after a
        # pass succeeded, so a broker starts out owing its first full pass.
        self._pending: dict[str, Scope] = {e.name: Scope() for e in endpoints}
        self._full_owed: dict[str, bool] = {e.name: True for e in endpoints}
        self._foreign: dict[str, Scope] = {e.name: Scope() for e in endpoints}
        self._retry_delay: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self.full_passes = 0
        self._passes_changed = asyncio.Condition()
        self._full_interval_s = full_interval_s
        self._settle_s = settle_s
        # What the last full pass on each broker saw: the objects it does not own (its counts
        # are part of what the broker should hold), the admin connection it ran on (a new one
        # may be a restarted broker), and when the next full pass is due regardless.
        self._unmanaged: dict[str, tuple[int, int, int] | None] = {e.name: None for e in endpoints}
        self._verified_connection: dict[str, int] = {e.name: -1 for e in endpoints}
        self._next_full_at: dict[str, float] = {e.name: 0.0 for e in endpoints}
        self._rng = random.Random()  # noqa: S311 - jitter, not security
        self.last_check: dict[str, CheckReport] = {}

    async def desired(self, scope: Scope | None = None) -> DynsecState:
        """Compute the desired state from the store now.

        Args:
            scope: when given, only the rows these names depend on are read (an API
                change must not cost a scan of every session); the result is then
                complete for the names in ``scope`` only.
        """
        now = self._clock_ms()
        if scope is None and self._tokens:
            state = desired_state(
                await self._store.list_devices(), (), (), password_for=self._password_for, session_clients=False
            )
        elif scope is None:
            state = desired_state(
                await self._store.list_devices(),
                await self._store.list_links(),
                await self._store.active_sessions(now_ms=now),
                password_for=self._password_for,
            )
        else:
            state = await self._desired_scoped(scope, now)
        if self._extra_desired is not None:
            extra = await self._extra_desired(scope)
            state.roles.update(extra.roles)
            state.clients.update(extra.clients)
        return state

    async def _desired_scoped(self, scope: Scope, now: int) -> DynsecState:
        """The desired state of the names in ``scope``, in four statements whatever its size."""
        if self._tokens:
            wanted_devices = {role.partition(":")[2] for role in scope.roles} | scope.clients
            active = await self._store.active_devices(wanted_devices)
            return desired_state(list(active.values()), (), (), password_for=self._password_for, session_clients=False)
        users = {group.removeprefix("user:") for group in scope.groups}
        sessions = await self._store.live_sessions(scope.clients, now_ms=now)
        linked = await self._store.active_devices_of_users(users)
        wanted = {role.partition(":")[2] for role in scope.roles}
        wanted.update(name for name in scope.clients if name not in sessions)
        devices = await self._store.active_devices(wanted)
        links: list[Link] = []
        for user, found in linked.items():
            for device in found:
                devices.setdefault(device.device_id, device)
                links.append(Link(user_sub=user, device_id=device.device_id, created_at_ms=0))
        state = desired_state(
            list(devices.values()),
            links,
            list(sessions.values()),
            password_for=self._password_for,
        )
        # A group with no devices still exists while its user has a session.
        for user in await self._store.users_with_sessions(users - linked.keys(), now_ms=now):
            group = user_group(user)
            state.groups.setdefault(group, GroupSpec(name=group, roles=frozenset()))
        return state

    async def apply(self, scope: Scope) -> ApplyOutcome:
        """Reconcile only the names in ``scope`` on every broker (concurrently).

        Failures are recorded in :attr:`status` and logged, not raised: the database
        is already updated, and the names are retried until the broker holds them.

        Returns:
            Which brokers hold the change now.
        """
        applied: dict[str, bool] = {}
        async with asyncio.TaskGroup() as tg:
            for client in self.clients:

                async def run(c: DynsecClient = client) -> None:
                    applied[c.endpoint.name] = await self._guarded(c, scope) is not None

                tg.create_task(run(), name=f"amora-authz[{client.endpoint.name}].reconcile-scope")
        return self._outcome(applied)

    def _outcome(self, applied: dict[str, bool]) -> ApplyOutcome:
        names = [c.endpoint.name for c in self.clients]
        return ApplyOutcome(
            applied=tuple(n for n in names if applied.get(n)),
            behind=tuple(n for n in names if not applied.get(n)),
            primary=names[0] if names else None,
        )

    def holds(self, scope: Scope) -> ApplyOutcome:
        """Which brokers hold every name of ``scope`` as the database last asked.

        A broker that owes a full pass holds nothing for sure; one with any of the
        names pending or taken by a foreign object does not hold the change.
        """
        applied = {}
        for client in self.clients:
            name = client.endpoint.name
            owed = self._pending[name] | self._foreign[name]
            overlap = (
                scope.roles & owed.roles
                or scope.groups & owed.groups
                or scope.clients & owed.clients
                or scope.revoked & owed.revoked
            )
            applied[name] = not self._full_owed[name] and not overlap
        return self._outcome(applied)

    async def taken_names(self, scope: Scope) -> list[str]:
        """Names of ``scope`` that a reachable broker holds as objects this service does not own.

        Unreachable brokers are skipped: should one hold such a name, its passes
        report it (and never adopt it) once it is back.
        """
        taken: set[str] = set()
        for client in self.clients:
            try:
                actual = await client.fetch_scope(scope)
            except AuthzError:
                continue
            taken.update(f"role:{n}" for n, r in actual.roles.items() if r.textname != MANAGED)
            taken.update(f"group:{n}" for n, g in actual.groups.items() if g.textname != MANAGED)
            taken.update(f"client:{n}" for n, c in actual.clients.items() if c.textname != MANAGED)
        return sorted(taken)

    def behind(self) -> list[str]:
        """The brokers that miss any change the database holds."""
        return [s.name for s in self.status.values() if s.behind]

    async def retry_pending(self, *, backoff: tuple[float, float] | None = None) -> None:
        """Re-apply what each broker missed: a full pass where one is owed, else the names.

        Args:
            backoff: ``(initial_s, max_s)``: skip a broker whose last retries failed
                until its delay (doubling from ``initial_s`` up to ``max_s``) has passed,
                so a broker that stays down is not dialled every interval. None: retry
                every broker that is behind now.
        """
        async with asyncio.TaskGroup() as tg:
            for client in self.clients:
                name = client.endpoint.name
                if backoff is not None and time.monotonic() < self._retry_at.get(name, 0.0):
                    continue
                if self._full_owed[name]:
                    tg.create_task(self._retry(client, None, backoff), name=f"amora-authz[{name}].retry-full")
                elif _scope_size(self._pending[name]):
                    # Names taken by foreign objects are not retried here: only an
                    # operator can free them, and the periodic full pass notices that.
                    scope = self._pending[name]
                    tg.create_task(self._retry(client, scope, backoff), name=f"amora-authz[{name}].retry-scope")

    async def _retry(self, client: DynsecClient, scope: Scope | None, backoff: tuple[float, float] | None) -> None:
        name = client.endpoint.name
        if await self._guarded(client, scope) is not None or backoff is None:
            self._retry_delay.pop(name, None)
            self._retry_at.pop(name, None)
            return
        initial, maximum = backoff
        delay = min(maximum, self._retry_delay.get(name, initial / 2) * 2)
        self._retry_delay[name] = delay
        self._retry_at[name] = time.monotonic() + delay

    def _update_status(self, name: str) -> None:
        status = self.status[name]
        status.pending_names = _scope_size(self._pending[name])
        foreign = self._foreign[name]
        status.foreign = ForeignNames(roles=foreign.roles, groups=foreign.groups, clients=foreign.clients).names()
        status.behind = self._full_owed[name] or bool(status.pending_names) or bool(status.foreign)

    async def reconcile_all(self) -> dict[str, int]:
        """Run a full pass on every broker.

        Returns:
            The number of commands sent to each reachable broker.
        """
        results: dict[str, int] = {}
        async with asyncio.TaskGroup() as tg:
            for client in self.clients:

                async def run(c: DynsecClient = client) -> None:
                    count = await self._guarded(c, None)
                    if count is not None:
                        results[c.endpoint.name] = count

                tg.create_task(run(), name=f"amora-authz[{client.endpoint.name}].reconcile-all")
        async with self._passes_changed:
            self.full_passes += 1
            self._passes_changed.notify_all()
        return results

    async def wait_full_passes(self, count: int) -> None:
        """Wait until ``count`` full passes have finished since start (for tests, tools)."""
        async with self._passes_changed:
            await self._passes_changed.wait_for(lambda: self.full_passes >= count)

    async def _guarded(self, client: DynsecClient, scope: Scope | None) -> int | None:
        """Run one pass; return the commands sent, or None when the broker does not hold it.

        Whatever the broker missed is remembered for :meth:`retry_pending`. Names are
        cleared only by a pass that started after they were recorded: a pass's
        database read happens under the broker's lock, after this snapshot.
        """
        name = client.endpoint.name
        status = self.status[name]
        pending_before = self._pending[name]
        try:
            count, foreign = await self._reconcile(client, scope)
        except AuthzError as exc:
            if self._on_pass is not None:
                self._on_pass(name, full=scope is None, ok=False)
            status.reachable = exc.code == "token_refused"  # it answered: it refuses our tokens
            status.last_error = exc.message
            if scope is None:
                self._full_owed[name] = True
            else:
                self._pending[name] = self._pending[name] | scope
            self._update_status(name)
            self._log.warning("broker.reconcile_failed", broker=name, error=exc.message)
            return None
        status.reachable = True
        status.last_error = None
        status.commands_applied += count
        if self._on_pass is not None:
            self._on_pass(name, full=scope is None, ok=True)
        taken = _foreign_scope(foreign)
        if scope is None:
            status.last_full_reconcile_ms = self._clock_ms()
            self._full_owed[name] = False
            self._pending[name] = _minus(self._pending[name], pending_before)
            self._foreign[name] = taken
        else:
            self._pending[name] = _minus(self._pending[name], scope)
            self._foreign[name] = _minus(self._foreign[name], scope) | taken
        if foreign:
            status.last_error = f"names taken by objects this service does not own: {', '.join(foreign.names()[:10])}"
            self._log.error(
                "broker.foreign_names",
                broker=name,
                names=foreign.names()[:20],
                fix="rename or delete those broker objects (service accounts belong under the reserved prefix)",
            )
        self._update_status(name)
        return None if foreign else count

    async def _reconcile(self, client: DynsecClient, scope: Scope | None) -> tuple[int, ForeignNames]:
        # The database is read under the broker's lock: a pass that read the database
        # before a later change must not apply after that change's own pass (an unlink
        # undone by a concurrent, stale link pass; a full pass deleting a session created
        # after its read). Every change is followed by a pass that starts after its write,
        # so the last pass applied reflects the latest state. The lock is held in this
        # process and in the database, so replicas of the service on one database take
        # turns per broker as well.
        name = client.endpoint.name
        async with self._locks[name], self._store.exclusive(f"reconcile:{name}"):
            desired = await self.desired(scope)
            if scope is None:
                actual = await client.fetch_state()
                commands = plan(desired, actual)
                foreign = foreign_names(desired, actual)
                self._unmanaged[name] = (
                    sum(c.textname != MANAGED for c in actual.clients.values()),
                    sum(g.textname != MANAGED for g in actual.groups.values()),
                    sum(r.textname != MANAGED for r in actual.roles.values()),
                )
                self._verified_connection[name] = client.connections
                jitter = self._rng.uniform(0.5, 1.5)
                self._next_full_at[name] = time.monotonic() + self._full_interval_s * jitter
            else:
                actual = await client.fetch_scope(scope)
                wanted = restrict(desired, scope)
                commands = plan(wanted, actual, scope=scope)
                foreign = foreign_names(wanted, actual)
            before: int | None = None
            if commands:
                before = self._mtime(client.endpoint)
                await client.execute_checked(commands)
                self._log.info(
                    "broker.reconciled",
                    broker=client.endpoint.name,
                    full=scope is None,
                    commands=len(commands),
                    kinds=sorted({c["command"] for c in commands}),
                )
            if scope is None:
                self._check_persisted(client.endpoint, desired)
            elif commands:
                self._check_modified(client.endpoint, before)
            if self._tokens and (scope is None or scope.revoked):
                await self._revocations(name, None if scope is None else scope.revoked)
            if scope is None and self._token_key is not None:
                await self._probe(client.endpoint, self._token_key)
            return len(commands), foreign

    async def close(self) -> None:
        """Disconnect from every broker."""
        for client in [*self.clients, *self.auth_clients.values()]:
            await client.close()

    def raise_if_unreachable(self) -> None:
        """Raise when no broker is reachable (readiness).

        Raises:
            BrokerError: every broker failed its last exchange.
        """
        if self.status and not any(s.reachable for s in self.status.values()):
            raise BrokerError("no broker is reachable", broker="*", code="brokers_unreachable")

    def raise_if_primary_unreachable(self) -> None:
        """Raise when the primary broker failed its last exchange (readiness to serve).

        A session is handed out only once its credential exists on the primary, so the
        primary is what serving logins needs; a standby that is down or behind is not.

        Raises:
            BrokerError: code ``primary_unreachable``, naming the broker.
        """
        primary = next(iter(self.status.values()), None)
        if primary is not None and not primary.reachable:
            raise BrokerError(
                f"the primary broker {primary.name} is unreachable", broker=primary.name, code="primary_unreachable"
            )
        self.raise_if_primary_refuses_tokens()

    def raise_if_behind(self) -> None:
        """Raise when any broker misses a change the database holds (readiness).

        Raises:
            BrokerError: code ``brokers_behind``, naming the brokers.
        """
        self.raise_if_unreachable()
        refusing = [s.name for s in self.status.values() if s.token_refused]
        if refusing:
            raise BrokerError(
                f"brokers refusing the service's session tokens: {', '.join(refusing)} "
                f"({self._token_refusals.get(refusing[0], 'probe refused')})",
                broker=refusing[0],
                code="token_refused",
            )
        behind = self.behind()
        if behind:
            raise BrokerError(
                f"brokers behind the database (retrying): {', '.join(behind)}",
                broker=behind[0],
                code="brokers_behind",
            )
