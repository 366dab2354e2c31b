"""The HTTP API's error answers: JSON ``{"code", "message"}`` with a stable code, from each exception.

`EXCEPTION_HANDLERS` maps the service's `AuthzError` tree, Litestar's validation and HTTP
exceptions and anything unexpected to those answers, adds ``WWW-Authenticate`` and
``Retry-After`` where they apply, and counts refused session creations and refreshes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from amora_authz._bodies import ErrorBody
from amora_authz._errors import AuthzError, ChangePendingError, InvalidInputError, RateLimitedError
from amora_authz._validation import field_errors

if TYPE_CHECKING:
    from amora_authz._runtime import AuthzRuntime

__all__ = ["EXCEPTION_HANDLERS"]


def _error(status: int, code: str, message: str, **headers: str) -> Response[ErrorBody]:
    return Response(ErrorBody(code=code, message=message), status_code=status, headers=headers)


_SESSION_ROUTES: Final = {
    ("POST", "/v1/sessions"): "create",
    ("POST", "/v1/sessions/{session_id:str}/refresh"): "refresh",
}


def _count_refusal(request: Request[Any, Any, Any], reason: str) -> None:
    """Count a refused session creation or refresh, by the error code answered."""
    operation = _SESSION_ROUTES.get((request.method, request.scope.get("path_template", "")))
    runtime: AuthzRuntime | None = getattr(request.app.state, "runtime", None)
    if operation is not None and runtime is not None:
        runtime.metrics.inc("amora_authz_sessions_refused_total", operation=operation, reason=reason)


def _authz_error(request: Request[Any, Any, Any], exc: AuthzError) -> Response[ErrorBody]:
    runtime: AuthzRuntime | None = getattr(request.app.state, "runtime", None)
    _count_refusal(request, exc.code)
    if runtime is not None and isinstance(exc, ChangePendingError):
        # Expected while a broker is down (readiness already says so): not an error per request.
        runtime.log.warning("request.change_pending", path=request.url.path, brokers=list(exc.brokers))
    elif runtime is not None and exc.status_code >= 500:
        runtime.log.error("request.failed", path=request.url.path, code=exc.code, error=exc.message)
    headers = {"WWW-Authenticate": f'Bearer error="{exc.code}"'} if exc.status_code == 401 else {}
    if isinstance(exc, RateLimitedError | ChangePendingError):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif exc.status_code == 503 and runtime is not None:
        # A broker or the database is down: worth retrying, not at once.
        headers["Retry-After"] = str(max(1, round(runtime.settings.broker_retry_interval_s)))
    brokers = list(exc.brokers) if isinstance(exc, ChangePendingError) else None
    return Response(
        ErrorBody(code=exc.code, message=exc.message, brokers=brokers), status_code=exc.status_code, headers=headers
    )


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorBody]:
    _count_refusal(request, InvalidInputError.default_code)
    errors = field_errors(exc.extra)
    reasons = "; ".join(f"{e.field}: {e.message}" for e in errors) or exc.detail
    body = ErrorBody(code=InvalidInputError.default_code, message=f"invalid request: {reasons}", errors=errors or None)
    return Response(body, status_code=422)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    runtime: AuthzRuntime | None = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.log.error("request.crashed", path=request.url.path, error=repr(exc), exc_info=exc)
    _count_refusal(request, AuthzError.default_code)
    return _error(500, AuthzError.default_code, "internal error")


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    if exc.status_code == 400:
        # Litestar's answer to a body that is not JSON at all: invalid input like any other.
        _count_refusal(request, InvalidInputError.default_code)
        return _error(422, InvalidInputError.default_code, f"invalid request: {exc.detail}")
    codes = {
        401: "invalid_token",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
    }
    code = codes.get(exc.status_code, "http_error")
    _count_refusal(request, code)
    return _error(exc.status_code, code, exc.detail)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    AuthzError: _authz_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}
