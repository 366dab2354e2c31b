"""W3C Trace Context carried in MQTT 5 user properties (sans-IO: strings in, a value out).

A command, its response and the state it caused may carry the user properties
``traceparent`` and ``tracestate`` (https://www.w3.org/TR/trace-context/), so that tracing
can follow one command from the app through the broker to the device and back. They are
advisory and outside the signed envelope: a receiver reads them only to file its spans, never
to decide anything, and drops a malformed value (the message itself is still processed).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "MAX_TRACESTATE_LENGTH",
    "TRACEPARENT",
    "TRACESTATE",
    "TRACE_PROPERTIES",
    "TraceContext",
    "trace_context",
    "trace_properties",
]

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
TRACE_PROPERTIES: Final = frozenset({TRACEPARENT, TRACESTATE})
MAX_TRACESTATE_LENGTH: Final = 512
"""W3C: at most 32 list members; receivers may drop longer values. Bounded here in characters."""

# version "00": exactly version-traceid-parentid-flags. A higher version may append fields
# after the flags ("-..."); version "ff" is invalid.
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


class TraceContext(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A validated trace context.

    Attributes:
        trace_id: 32 lowercase hex digits, not all zero.
        parent_id: 16 lowercase hex digits (the sender's span), not all zero.
        sampled: The sender recorded its span (flag bit 0).
        tracestate: The vendor list, as received (None: absent or too long).
    """

    trace_id: str
    parent_id: str
    sampled: bool
    tracestate: str | None = None

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` value (version 00)."""
        return f"00-{self.trace_id}-{self.parent_id}-{'01' if self.sampled else '00'}"


def trace_context(user_properties: Iterable[tuple[str, str]]) -> TraceContext | None:
    """The trace context among a message's user properties, or None when absent or malformed.

    The first ``traceparent`` counts (W3C: a receiver seeing several may drop them all; a
    broker does not reorder properties, so the first is the sender's). ``tracestate`` is
    kept only beside a valid ``traceparent`` and when at most ``MAX_TRACESTATE_LENGTH``.
    """
    parent: str | None = None
    state: str | None = None
    for key, value in user_properties:
        if key == TRACEPARENT and parent is None:
            parent = value
        elif key == TRACESTATE and state is None:
            state = value
    if parent is None:
        return None
    match = _TRACEPARENT.fullmatch(parent)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    if state is not None and (len(state) > MAX_TRACESTATE_LENGTH or not state.isprintable()):
        state = None
    return TraceContext(trace_id=trace_id, parent_id=parent_id, sampled=bool(int(flags, 16) & 1), tracestate=state)


def trace_properties(context: TraceContext) -> list[tuple[str, str]]:
    """The user properties that carry ``context`` (``traceparent``, then ``tracestate``)."""
    properties = [(TRACEPARENT, context.traceparent)]
    if context.tracestate:
        properties.append((TRACESTATE, context.tracestate))
    return properties
