"""structlog set-up for the agent process: JSON lines on stderr (journald keeps them)."""

from __future__ import annotations

import logging
import sys

import structlog

from amora_agent._telemetry import add_trace_context

__all__ = ["configure_logging"]


def configure_logging(level: str = "info") -> None:
    """Send structlog and stdlib logging to stderr as JSON lines at ``level``.

    Only the agent process calls this; the library itself never configures logging.
    The level can change at run time through the root logger (desired properties).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(),
            foreign_pre_chain=[
                add_trace_context,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # gmqtt logs every SUBSCRIBE/SUBACK at INFO, and the liveness probe re-subscribes every
    # 1.5 s: unless debugging, only its warnings are worth a line.
    for name in ("gmqtt", "amora_agent.gmqtt"):
        logging.getLogger(name).setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            add_trace_context,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
