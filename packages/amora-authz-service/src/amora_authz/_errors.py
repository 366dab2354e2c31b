"""The authz service's exceptions: one root, subclasses by what the caller can do next.

Each subclass carries a stable machine-readable ``code`` and the HTTP status the API
answers with, so the HTTP layer maps them without a lookup table of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "AuthenticationError",
    "AuthzError",
    "BrokerError",
    "ChangePendingError",
    "ConfigError",
    "ConflictError",
    "InvalidInputError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "StoreError",
]


class AuthzError(Exception):
    """Root of every error the authz service raises.

    Attributes:
        code: stable machine-readable error code (part of the HTTP API).
        status_code: HTTP status the API answers with.
    """

    default_code: ClassVar[str] = "internal_error"
    status_code: ClassVar[int] = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        """Create the error.

        Args:
            message: human-readable explanation.
            code: stable error code; the class default when omitted.
        """
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code


class AuthenticationError(AuthzError):
    """The bearer token is missing, malformed, expired, forged or for another audience."""

    default_code = "invalid_token"
    status_code = 401


class PermissionDeniedError(AuthzError):
    """The caller is authenticated but lacks the right (e.g. not an admin, not linked)."""

    default_code = "forbidden"
    status_code = 403


class NotFoundError(AuthzError):
    """The named device, session or link does not exist."""

    default_code = "not_found"
    status_code = 404

    def __init__(self, message: str, *, kind: str, key: str, code: str | None = None) -> None:
        """Create the error.

        Args:
            message: human-readable explanation.
            kind: what was looked up (``device``, ``session``, ``link``).
            key: the identifier that was not found.
            code: stable error code; the class default when omitted.
        """
        super().__init__(message, code=code)
        self.kind = kind
        self.key = key


class ConflictError(AuthzError):
    """The request clashes with existing state (device already registered, revoked...)."""

    default_code = "conflict"
    status_code = 409


class InvalidInputError(AuthzError):
    """The request body or a path parameter is invalid."""

    default_code = "invalid_input"
    status_code = 422


class StoreError(AuthzError):
    """The database failed (connection lost, migration failed...)."""

    default_code = "store_error"
    status_code = 503


class BrokerError(AuthzError):
    """A broker refused or did not answer a dynamic-security command, or cannot persist.

    Attributes:
        broker: the configured name of the broker.
    """

    default_code = "broker_error"
    status_code = 503

    def __init__(self, message: str, *, broker: str, code: str | None = None) -> None:
        """Create the error.

        Args:
            message: human-readable explanation.
            broker: the configured name of the broker.
            code: stable error code; the class default when omitted.
        """
        super().__init__(message, code=code)
        self.broker = broker


class ConfigError(AuthzError):
    """The configuration file or environment is invalid."""

    default_code = "config_error"


class ChangePendingError(AuthzError):
    """An access change is in the database but not yet on every broker (fail closed).

    The service keeps retrying in the background; repeating the same request answers
    this again until every broker holds the change, then the request's normal success.

    Attributes:
        brokers: the brokers that do not hold the change yet.
        retry_after_s: when repeating the request is worth it.
    """

    default_code = "change_pending"
    status_code = 503

    def __init__(self, message: str, *, brokers: Sequence[str], retry_after_s: int, code: str | None = None) -> None:
        """Create the error.

        Args:
            message: human-readable explanation.
            brokers: the brokers that do not hold the change yet.
            retry_after_s: seconds before repeating the request is worth it.
            code: stable error code; the class default when omitted.
        """
        super().__init__(message, code=code)
        self.brokers = tuple(brokers)
        self.retry_after_s = retry_after_s


class RateLimitedError(AuthzError):
    """Too many requests of one kind, from one user or from everyone together.

    Attributes:
        retry_after_s: seconds until the request would be admitted.
        limit: which limit refused it (``sessions_per_user``, ``admin_global``...).
    """

    default_code = "rate_limited"
    status_code = 429

    def __init__(self, message: str, *, retry_after_s: int, limit: str, code: str | None = None) -> None:
        """Create the error.

        Args:
            message: human-readable explanation.
            retry_after_s: seconds until the request would be admitted.
            limit: which limit refused it.
            code: stable error code; the class default when omitted.
        """
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
        self.limit = limit
