"""HTTP request telemetry (ASGI middleware): a count and a duration per request, a server span.

The route is Litestar's path template (``/v1/sessions/{session_id:str}/refresh``), never the
path itself: ids in paths would make one time series per session. Requests no route matches
(404) never reach route middleware and are not counted. The span continues a W3C
``traceparent`` header when the caller sent one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from opentelemetry import trace
from opentelemetry.propagate import extract

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from amora_authz._runtime import AuthzRuntime

__all__ = ["RequestTelemetry"]


class RequestTelemetry:
    """Wrap an ASGI app; count and time each HTTP request on the runtime's telemetry."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app``."""
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, recording it (lifespan and websocket scopes pass through)."""
        runtime: AuthzRuntime | None = getattr(scope["app"].state, "runtime", None)
        if scope["type"] != ScopeType.HTTP or runtime is None:
            await self._app(scope, receive, send)
            return
        telemetry = runtime.telemetry
        started = time.perf_counter()
        method = scope.get("method", "")
        route = scope.get("path_template") or "unmatched"
        status: dict[str, int] = {}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and not status:
                status["code"] = message["status"]
                attributes: dict[str, Any] = {"method": method, "route": route, "status": message["status"]}
                telemetry.http_duration.record(time.perf_counter() - started, attributes)
                telemetry.metrics.inc("amora_authz_http_requests_total", **attributes)
            await send(message)

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        with telemetry.tracer.start_as_current_span(
            f"{method} {route}",
            context=extract(headers),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        ) as span:
            await self._app(scope, receive, sending)
            if "code" in status:
                span.set_attribute("http.response.status_code", status["code"])
                if status["code"] >= 500:
                    span.set_status(trace.StatusCode.ERROR)
