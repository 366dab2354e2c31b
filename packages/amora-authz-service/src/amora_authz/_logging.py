"""structlog set-up for the service process (libraries never configure logging)."""

from __future__ import annotations

import logging
import sys

import structlog

from amora_authz._telemetry import add_trace_context

__all__ = ["configure_logging"]


def configure_logging(*, level: str = "info", json: bool = True) -> None:
    """Send structured logs to stderr, JSON lines by default.

    The standard library's loggers (uvicorn, gmqtt) go through the same renderer, so
    every line of the process has one format.

    Args:
        level: minimum level name (``debug``, ``info``, ``warning``, ``error``).
        json: JSON lines (production) instead of the console renderer.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Per-request lines from the HTTP client (JWKS fetches) and gmqtt's chatter are noise.
    for name in ("httpx", "httpcore", "gmqtt"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
