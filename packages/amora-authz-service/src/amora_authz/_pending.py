"""Access changes answered ``change_pending``: remembered so that a repeat can tell when they are done.

Fail closed: a change that takes access away is reported done only when every broker
holds it. When one does not, the database keeps the change, the fleet retries, and
the caller is told to repeat the request. The repeat finds the database already
changed (the link is gone, the session deleted, the device revoked); this memory says
whether that change is still pending somewhere, so the repeat answers ``change_pending``
again or the original success, instead of a misleading ``404`` or ``409``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from amora_authz._errors import ChangePendingError

if TYPE_CHECKING:
    from amora_authz._dynsec import Scope
    from amora_authz._fleet import ApplyOutcome, BrokerFleet

__all__ = ["PendingChanges"]

MAX_REMEMBERED = 10_000
"""Pending changes remembered for their repeat; the oldest is forgotten first (its repeat
then gets the ordinary answer for the database's state)."""


class PendingChanges:
    """Changes the database holds that some broker did not when they were answered."""

    def __init__(self, fleet: BrokerFleet, *, retry_after_s: int) -> None:
        """Remember nothing yet.

        Args:
            fleet: the brokers (asked which of them hold a change).
            retry_after_s: the ``Retry-After`` of a ``change_pending`` answer.
        """
        self._fleet = fleet
        self._retry_after_s = max(1, retry_after_s)
        self._changes: OrderedDict[str, tuple[Scope, list[int]]] = OrderedDict()

    def settle(self, key: str, scope: Scope, outcome: ApplyOutcome, result: list[int] | None = None) -> None:
        """Report the change ``key`` done only when every broker holds it.

        Args:
            key: names the change and its caller (``unlink:alice:player-1``).
            scope: the broker names the change touched.
            outcome: which brokers hold it.
            result: what the successful answer returns (revoked serials).

        Raises:
            ChangePendingError: some broker does not hold it yet (it is remembered).
        """
        if outcome.complete:
            self._changes.pop(key, None)
            return
        self._changes[key] = (scope, result or [])
        self._changes.move_to_end(key)
        while len(self._changes) > MAX_REMEMBERED:
            self._changes.popitem(last=False)
        raise ChangePendingError(
            "the change is saved but not yet applied on broker(s) "
            f"{', '.join(outcome.behind)}; the service keeps retrying: repeat this request "
            "to learn when every broker holds it",
            brokers=outcome.behind,
            retry_after_s=self._retry_after_s,
        )

    def repeat(self, key: str) -> list[int] | None:
        """For a change the database already holds: its result, or None if it was never pending.

        Raises:
            ChangePendingError: it is still pending on some broker.
        """
        entry = self._changes.get(key)
        if entry is None:
            return None
        scope, result = entry
        self.settle(key, scope, self._fleet.holds(scope), result)
        return result
