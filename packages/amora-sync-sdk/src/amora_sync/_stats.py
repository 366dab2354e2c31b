"""The client's counters, shared by the modules that make up the client."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientStats"]


@dataclass(kw_only=True)
class ClientStats:
    """Counters, for dashboards and tests.

    Attributes:
        received: Messages received on the device topics.
        delivered: Verified states and statuses handed to watchers (before fan-out).
        invalid: Messages dropped because verification failed (bad signature, wrong key,
            wrong topic, malformed, not from a session device).
        stale: Verified states dropped as duplicates or older versions.
        connects: Successful connections (the first one included).
        session_exchanges: Token exchanges (``POST /v1/sessions``).
        session_refreshes: Successful session refreshes.
        session_resumes: Stored sessions adopted at start (`AmoraClient` ``session_store``).
        session_resume_failures: Stored sessions that could not be used (unreadable,
            changed, expired, another user's, or refused by the broker); each was
            followed by a token exchange.
        commands_sent: Command publishes (re-sends after a link change included).
        rate_limit_waits: Session requests the authz service answered 429 and the client
            waited out (``Retry-After``) before asking again.
    """

    received: int = 0
    delivered: int = 0
    invalid: int = 0
    stale: int = 0
    connects: int = 0
    session_exchanges: int = 0
    session_refreshes: int = 0
    session_resumes: int = 0
    session_resume_failures: int = 0
    commands_sent: int = 0
    rate_limit_waits: int = 0
