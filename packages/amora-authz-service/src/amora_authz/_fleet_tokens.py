"""Token mode's part of the broker fleet: revocations to each broker's plugin, and the token probe.

A mixin of `amora_authz._fleet.BrokerFleet`: the fleet's passes call it under their locks, with
their fail-closed bookkeeping (a failure here fails the pass, which is retried). Kept apart
because it is one job of its own: what each broker's ``amora_auth`` plugin must hold (the
revocations in force, `amora_authz._revocations`), whether the broker accepts the service's
tokens at all (`amora_authz._tokenprobe`, security review F7), and what either means for
readiness and for purging revocations.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

from amora_authz._control import DynsecClient
from amora_authz._errors import AuthzError, BrokerError
from amora_authz._revocations import (
    AUTH_CONTROL_TOPIC,
    NO_PLUGIN_HINT,
    confirm_synced,
    list_revocations,
    missing_revocations,
    send_revocations,
)
from amora_authz._tokenprobe import probe_token

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import structlog

    from amora_authz._brokertoken import BrokerTokenKey
    from amora_authz._dynsec import BrokerEndpoint, Scope
    from amora_authz._fleet import BrokerStatus
    from amora_authz._store import Store

__all__ = ["TokenRevocations"]


def _kicks(recorded: dict[str, int], usernames: frozenset[str] | None, *, now_s: int) -> dict[str, int]:
    """What to send for ended sessions: their revocations, whatever their ``until``.

    A revocation whose ``until`` passed still kicks the live connection (security review
    F4: the plugin never re-checks ``exp`` on one); a name whose row another replica
    already purged is sent with ``until`` now (a kick alone).
    """
    if usernames is not None:
        recorded = {name: recorded.get(name, now_s) for name in usernames}
    return recorded


class TokenRevocations:
    """Revocations and the token probe; the state they read is set up by `BrokerFleet.__init__`."""

    status: dict[str, BrokerStatus]
    auth_clients: dict[str, DynsecClient]
    _store: Store
    _log: structlog.typing.FilteringBoundLogger
    _clock_ms: Callable[[], int]
    _timeout_s: float
    _pending: dict[str, Scope]
    _full_owed: dict[str, bool]
    _token_key: BrokerTokenKey | None
    _token_refusals: dict[str, str]  # broker -> what its probe's refusal said, and the fix

    def _update_status(self, name: str) -> None:
        raise NotImplementedError  # `BrokerFleet` keeps the status

    def _init_token_mode(
        self,
        endpoints: Sequence[BrokerEndpoint],
        *,
        logger: structlog.typing.FilteringBoundLogger,
        timeout_s: float,
        tokens: bool,
        token_key: BrokerTokenKey | None,
    ) -> None:
        """Set up token mode: a second admin connection per broker, to the amora_auth plugin."""
        self._token_key = token_key
        self._token_refusals = {}
        self.auth_clients = {
            e.name: DynsecClient(
                e, logger=logger, timeout_s=timeout_s, control_topic=AUTH_CONTROL_TOPIC, unanswered_hint=NO_PLUGIN_HINT
            )
            for e in endpoints
            if tokens
        }
        for name, auth in self.auth_clients.items():
            auth.on_connection_lost = functools.partial(self._auth_connection_lost, name)

    def revocations_owed(self) -> bool:
        """Token mode: whether some broker may not have acknowledged every recorded revocation.

        While it may, revocations past their ``until`` stay in the database (not purged): the
        broker's live connections under the ended sessions still need their kick.
        """
        return any(self._full_owed[n] or self._pending[n].revoked for n in self._pending)

    def raise_if_primary_refuses_tokens(self) -> None:
        """Token mode: raise when the primary refused the last probe token (logins would be useless).

        Raises:
            BrokerError: code ``token_refused``, naming the broker and the fix.
        """
        primary = next(iter(self.status.values()), None)
        if primary is not None and primary.token_refused:
            raise BrokerError(
                f"the primary broker {primary.name} refuses the service's session tokens "
                f"({self._token_refusals.get(primary.name, 'probe refused')})",
                broker=primary.name,
                code="token_refused",
            )

    def _auth_connection_lost(self, name: str) -> None:
        """Token mode: the plugin's admin connection dropped: the broker may be restarting.

        A restarted broker may have lost its deny list (then it refuses every session login
        until told ``synced``) or loaded an older one (then it accepts tokens revoked since):
        a full pass is owed now, so the retry loop runs it as soon as the broker answers,
        not at the next periodic check.
        """
        self._full_owed[name] = True
        self._update_status(name)
        self._log.info("broker.auth_connection_lost", broker=name, next="full pass as soon as it answers")

    async def _revocations(self, name: str, usernames: frozenset[str] | None) -> None:
        """Token mode: give the broker the revocations of ``usernames`` (None: all it lacks).

        Raises:
            BrokerError: the broker's plugin is unreachable, did not answer, or refused.
        """
        client = self.auth_clients[name]
        status = self.status[name]
        wanted = _kicks(await self._store.revocations_of(usernames), usernames, now_s=self._clock_ms() // 1000)
        if usernames is None:
            # A full pass: what the broker lacks (down during a change, or restarted from an
            # older deny list). Entries it holds beyond the database's stay: never taken back.
            # Rows past `until` are still in the database only while some broker may have
            # missed their kick: sent again (the plugin then kicks and lists nothing).
            now_s = self._clock_ms() // 1000
            past = {u: t for u, t in wanted.items() if t <= now_s}
            live = {u: t for u, t in wanted.items() if t > now_s}
            wanted = missing_revocations(live, await list_revocations(client)) | past
        try:
            sent = await send_revocations(client, wanted)
        except AuthzError:
            status.revocations_failed += len(wanted)
            raise
        status.revocations_sent += sent
        if sent:
            self._log.info("broker.revoked", broker=name, sessions=sent, full=usernames is None)
        if usernames is None and not await confirm_synced(client):
            self._log.warning(
                "broker.plugin_without_synced",
                broker=name,
                fix="update the broker's amora_auth plugin: this one accepts revoked tokens after losing its deny list",
            )

    async def _probe(self, endpoint: BrokerEndpoint, key: BrokerTokenKey) -> None:
        """Token mode: connect once with a probe token; a refusal fails the full pass.

        Raises:
            BrokerError: code ``token_refused`` (the pass is retried; readiness fails), or
                ``broker_unreachable``.
        """
        status = self.status[endpoint.name]
        # The broker checks iat/exp against its own wall clock: the real time, not `_clock_ms`.
        refusal = await probe_token(endpoint, key, now_s=int(time.time()), timeout_s=self._timeout_s)
        status.token_refused = refusal is not None
        if refusal is None:
            self._token_refusals.pop(endpoint.name, None)
            return
        fix = (
            f"load the public key of the service's token_key_file (amora-authz broker-token-key public, key id "
            f"{key.kid}) into the broker's plugin_opt_public_keys and send it SIGHUP, and check that its "
            f"plugin_opt_issuer is {key.issuer!r} and plugin_opt_audience {key.audience!r}"
        )
        self._log.error("broker.token_refused", broker=endpoint.name, refusal=refusal, fix=fix)
        self._token_refusals[endpoint.name] = f"{refusal}: {fix}"
        raise BrokerError(
            f"broker {endpoint.name} refuses the service's session tokens ({refusal}): {fix}",
            broker=endpoint.name,
            code="token_refused",
        )
