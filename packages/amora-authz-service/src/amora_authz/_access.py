"""The access log: one structured line per HTTP request (ASGI middleware).

``http.request`` with the method, the path (never the query string), the status, the time
to the response's start in milliseconds and the client address, on the ``amora_authz.access``
logger at info level; ``access_log = false`` turns it off. Bodies and headers are never
logged (they carry tokens, keys and enrolment claims).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog
from litestar.enums import ScopeType

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog"]


class AccessLog:
    """Wrap an ASGI app; log each HTTP request once its response has started."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app``."""
        self._app = app
        self._log = structlog.get_logger("amora_authz.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request and log it (lifespan and websocket scopes pass through)."""
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and not status:
                status["code"] = message["status"]
                client = scope.get("client")
                self._log.info(
                    "http.request",
                    method=scope.get("method"),
                    path=scope["path"],
                    status=message["status"],
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                    client=None if client is None else client[0],
                )
            await send(message)

        await self._app(scope, receive, sending)
