"""Rate limits: token buckets per user and for everyone, on session issuance and the admin API.

Creating a session costs a ``createClient`` on every broker, and mosquitto 2.0 rewrites
its whole dynamic-security file per command, so session creation (and refresh, which
signs a grant) and the admin API are the service's expensive doors. Each has a bucket
per user (one account cannot starve the others) and one shared by everyone (all
accounts together cannot tie up the brokers' admin channel).

In token mode a session creation writes nothing to the brokers (it signs a token and
stores a row), so the global session limit that protected the brokers' admin channel
defaults higher there (:data:`TOKEN_SESSIONS_GLOBAL`); it still exists, so that a flood
beyond what one instance serves is answered ``429`` at once instead of queueing, and the
per-user limits are the same in both modes (issue #11 item 6).

A refused request consumes nothing; its ``Retry-After`` is when the emptiest bucket
involved holds a token again. Buckets live in memory: one instance per database is
the supported deployment (README), so there is nothing to share.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import msgspec

from amora_authz._errors import RateLimitedError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DYNSEC_SESSIONS_GLOBAL", "TOKEN_SESSIONS_GLOBAL", "RateLimit", "RateLimitSettings", "RateLimiter"]

_MAX_TRACKED = 100_000
"""Per-user buckets kept; the least recently used is forgotten first (a refilled bucket
and a forgotten one are the same thing, so forgetting only ever errs towards admitting)."""


class RateLimit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A token bucket: ``burst`` requests at once, refilled at ``rate_per_s``.

    Attributes:
        rate_per_s: sustained requests per second.
        burst: bucket size (requests admitted back to back after a quiet period).
    """

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        """Refuse limits that would admit nothing or never refill."""
        if self.rate_per_s <= 0 or self.burst < 1:
            msg = f"a rate limit needs rate_per_s > 0 and burst >= 1 (got {self.rate_per_s}, {self.burst})"
            raise ValueError(msg)


DYNSEC_SESSIONS_GLOBAL = RateLimit(rate_per_s=20.0, burst=100)
"""Default ``sessions_global`` in dynsec mode: each creation is a ``createClient`` on every
broker, and mosquitto 2.0.11 rewrites its whole dynsec file per command (~7-20/s at 10,000
sessions, ADR 0013), so more would only queue behind the brokers."""

TOKEN_SESSIONS_GLOBAL = RateLimit(rate_per_s=200.0, burst=1000)
"""Default ``sessions_global`` in token mode: twice the 100 first logins/s target of issue
#15, about what one instance serves at all (170-205/s measured with or without a broker,
README), with 5 s of it as burst for a reconnect wave."""


class RateLimitSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[rate_limits]`` table.

    Attributes:
        enabled: apply the limits at all.
        sessions_per_user: session creation and refresh, per user.
        sessions_global: session creation and refresh, all users together; None (the
            default) takes the mode's default, :data:`DYNSEC_SESSIONS_GLOBAL` or
            :data:`TOKEN_SESSIONS_GLOBAL`.
        admin_per_user: admin API calls, per caller.
        admin_global: admin API calls, all callers together.
    """

    enabled: bool = True
    sessions_per_user: RateLimit = RateLimit(rate_per_s=1.0, burst=20)
    sessions_global: RateLimit | None = None
    admin_per_user: RateLimit = RateLimit(rate_per_s=10.0, burst=100)
    admin_global: RateLimit = RateLimit(rate_per_s=50.0, burst=200)

    def sessions_global_for(self, *, token_mode: bool) -> RateLimit:
        """The global session limit in effect: the configured one, else the mode's default."""
        if self.sessions_global is not None:
            return self.sessions_global
        return TOKEN_SESSIONS_GLOBAL if token_mode else DYNSEC_SESSIONS_GLOBAL


class _Buckets:
    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def tokens(self, key: str, now: float) -> float:
        tokens, at = self._state.get(key, (float(self.limit.burst), now))
        return min(float(self.limit.burst), tokens + (now - at) * self.limit.rate_per_s)

    def wait_s(self, key: str, now: float) -> float:
        """Seconds until the bucket holds one token (0: it does now)."""
        missing = 1.0 - self.tokens(key, now)
        return max(0.0, missing / self.limit.rate_per_s)

    def take(self, key: str, now: float) -> None:
        self._state[key] = (self.tokens(key, now) - 1.0, now)
        self._state.move_to_end(key)
        while len(self._state) > _MAX_TRACKED:
            self._state.popitem(last=False)


class RateLimiter:
    """The service's limits; :meth:`check` admits a request or raises ``RateLimitedError``."""

    KINDS = ("sessions", "admin")

    def __init__(
        self,
        settings: RateLimitSettings,
        *,
        token_mode: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create empty (full) buckets.

        Args:
            settings: the limits.
            token_mode: sessions get broker tokens (picks the default ``sessions_global``).
            clock: monotonic seconds.
        """
        self.settings = settings
        self.sessions_global = settings.sessions_global_for(token_mode=token_mode)
        self._clock = clock
        self._per_user = {
            "sessions": _Buckets(settings.sessions_per_user),
            "admin": _Buckets(settings.admin_per_user),
        }
        self._global = {
            "sessions": _Buckets(self.sessions_global),
            "admin": _Buckets(settings.admin_global),
        }

    def check(self, kind: str, user: str) -> None:
        """Admit one request of ``kind`` (``sessions`` or ``admin``) by ``user``.

        Raises:
            RateLimitedError: a bucket is empty; nothing was consumed.
        """
        if not self.settings.enabled:
            return
        now = self._clock()
        per_user, shared = self._per_user[kind], self._global[kind]
        waits = {
            f"{kind}_per_user": per_user.wait_s(user, now),
            f"{kind}_global": shared.wait_s("*", now),
        }
        limit, wait = max(waits.items(), key=lambda item: item[1])
        if wait > 0:
            raise RateLimitedError(
                f"too many {kind} requests ({limit.replace('_', ' ')}); retry after the Retry-After delay",
                retry_after_s=max(1, math.ceil(wait)),
                limit=limit,
            )
        per_user.take(user, now)
        shared.take("*", now)
