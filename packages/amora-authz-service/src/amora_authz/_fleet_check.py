"""The periodic pass on each broker: a cheap comparison of counts, a full pass only when needed.

A mixin of `amora_authz._fleet.BrokerFleet` (it uses the fleet's locks, store, status and
full pass); kept apart because it is one job with its own reasons
(``docs/decisions/0013-logins-resume-and-reconcile-cost.md``): in steady state a check costs
three one-object listings and one aggregate query, whatever the number of sessions.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import msgspec

from amora_authz._errors import AuthzError

if TYPE_CHECKING:
    import random
    from collections.abc import Awaitable, Callable

    import structlog

    from amora_authz._control import DynsecClient
    from amora_authz._dynsec import DynsecState, Scope
    from amora_authz._fleet import BrokerStatus
    from amora_authz._store import Store

__all__ = ["CheckReport", "PeriodicCheck"]


class CheckReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one periodic check of a broker did (`BrokerFleet.check_all`).

    Attributes:
        broker: the broker's configured name.
        full: whether a full pass ran, and why (``None``: the counts matched, nothing ran).
        duration_ms: how long the check (and the full pass, if any) took.
        commands: dynsec commands sent.
    """

    broker: str
    full: str | None
    duration_ms: float
    commands: int = 0


class PeriodicCheck:
    """`check_all` and its parts; the state it reads is set up by `BrokerFleet.__init__`."""

    clients: list[DynsecClient]
    status: dict[str, BrokerStatus]
    full_passes: int
    last_check: dict[str, CheckReport]
    _store: Store
    _log: structlog.typing.FilteringBoundLogger
    _locks: dict[str, asyncio.Lock]
    _passes_changed: asyncio.Condition
    _full_owed: dict[str, bool]
    _settle_s: float
    _unmanaged: dict[str, tuple[int, int, int] | None]
    _verified_connection: dict[str, int]
    _next_full_at: dict[str, float]
    _rng: random.Random
    _extra_desired: Callable[[Scope | None], Awaitable[DynsecState]] | None
    _tokens: bool

    async def _guarded(self, client: DynsecClient, scope: Scope | None) -> int | None:
        raise NotImplementedError  # `BrokerFleet` runs the pass

    async def check_all(self) -> list[CheckReport]:
        """The periodic pass: a cheap check on every broker, a full pass only where it is owed.

        A broker gets a full pass when one is owed (never done, failed, names pending or
        taken), when its admin connection is new (a restarted broker may have loaded an older
        file), when its jittered `full_interval_s` is up, or when the counts of clients,
        groups and roles it reports differ from the database's twice `settle_s` apart.
        Otherwise the check costs three one-object listings and one aggregate query, whatever
        the number of sessions, and changes nothing.
        """
        reports: list[CheckReport] = []
        async with asyncio.TaskGroup() as tg:
            for client in self.clients:

                async def run(c: DynsecClient = client) -> None:
                    reports.append(await self._check(c))

                tg.create_task(run(), name=f"amora-authz[{client.endpoint.name}].check")
        if any(r.full for r in reports):
            async with self._passes_changed:
                self.full_passes += 1
                self._passes_changed.notify_all()
        self.last_check = {r.broker: r for r in reports}
        return reports

    def _full_reason(self, client: DynsecClient) -> str | None:
        name = client.endpoint.name
        status = self.status[name]
        if self._full_owed[name] or self._unmanaged[name] is None:
            return "owed"
        if status.behind:
            return "behind"
        if client.connections != self._verified_connection[name]:
            return "reconnected"
        if time.monotonic() >= self._next_full_at[name]:
            return "interval"
        return None

    async def _check(self, client: DynsecClient) -> CheckReport:
        name = client.endpoint.name
        start = time.perf_counter()
        reason = self._full_reason(client)
        if reason is None:
            try:
                if not await self._counts_agree(client):
                    await asyncio.sleep(self._settle_s)
                    if not await self._counts_agree(client):
                        reason = "counts differ"
            except AuthzError as exc:
                self._log.warning("broker.check_failed", broker=name, error=exc.message)
                reason = "check failed"
            if reason is None and client.connections != self._verified_connection[name]:
                reason = "reconnected"  # the check itself found the broker gone and back
        if reason is None:
            return CheckReport(broker=name, full=None, duration_ms=round((time.perf_counter() - start) * 1000, 1))
        count = await self._guarded(client, None)
        duration = round((time.perf_counter() - start) * 1000, 1)
        self._log.info("broker.full_pass", broker=name, reason=reason, duration_ms=duration, commands=count)
        return CheckReport(broker=name, full=reason, duration_ms=duration, commands=count or 0)

    async def _counts_agree(self, client: DynsecClient) -> bool:
        """Whether the broker holds as many clients, groups and roles as the database asks for.

        Under the broker's locks, so no change of this service is half applied meanwhile.
        """
        name = client.endpoint.name
        unmanaged = self._unmanaged[name]
        async with self._locks[name], self._store.exclusive(f"reconcile:{name}"):
            wanted = await self._store.managed_counts(session_clients=not self._tokens)
            if self._extra_desired is not None:  # the backends' accounts and roles (a handful)
                extra = await self._extra_desired(None)
                wanted = (wanted[0] + len(extra.clients), wanted[1], wanted[2] + len(extra.roles))
            held = await client.fetch_counts()
        if unmanaged is None:
            return False
        expected = tuple(w + u for w, u in zip(wanted, unmanaged, strict=True))
        if held != expected:
            self._log.info("broker.counts_differ", broker=name, held=held, expected=expected)
        return held == expected
