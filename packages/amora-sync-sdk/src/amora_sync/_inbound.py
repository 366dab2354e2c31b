"""Inbound verification: every message on a device topic is checked before anyone sees it.

A message is accepted only when its topic names a device of the current session, its
envelope verifies against that device's key from the session (signature, topic binding,
sender, schema, freshness) and its type and device id match the topic. What passes goes
to one of three sinks; everything else is dropped and counted in ``stats.invalid``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amora_protocol import (
    CommandResponse,
    ConnectionStatus,
    DeviceState,
    ProtocolError,
    TopicKind,
    now_ms,
    parse_topic,
    verify_envelope,
)

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Mapping

    from amora_protocol import EncryptionKey
    from amora_sync._session import Session
    from amora_sync._stats import ClientStats
    from amora_sync._telemetry import CommandTracer

__all__ = ["InboundVerifier"]

_NO_CONTENT_TYPE: tuple[None] = (None,)  # gmqtt gives properties as lists; absent means msgpack


class InboundVerifier:
    """Verifies messages from the broker and routes them by kind.

    Called for every message the link receives (on gmqtt's read loop: it never blocks).
    """

    def __init__(  # noqa: PLR0913 - keyword-only wiring
        self,
        *,
        session: Callable[[], Session | None],
        decrypt_key: EncryptionKey,
        on_state: Callable[[DeviceState], None],
        on_status: Callable[[ConnectionStatus], None],
        on_response: Callable[[CommandResponse], None],
        stats: ClientStats,
        logger: logging.Logger,
        tracer: CommandTracer | None = None,
    ) -> None:
        """Wire the verifier.

        Args:
            session: Returns the current session (its devices' keys), None before the first.
            decrypt_key: This client's X25519 key (sealed messages).
            on_state: Gets each verified `DeviceState`.
            on_status: Gets each verified `ConnectionStatus`.
            on_response: Gets each verified `CommandResponse`.
            stats: Counts received and invalid messages.
            logger: Where drops are logged.
            tracer: Records answers in their command's trace (None: no tracing).
        """
        self._session = session
        self._decrypt_key = decrypt_key
        self._on_state = on_state
        self._on_status = on_status
        self._on_response = on_response
        self._stats = stats
        self._log = logger
        self._tracer = tracer if tracer is not None and tracer.enabled else None

    def __call__(self, topic: str, payload: bytes, properties: Mapping[str, Any]) -> None:
        """Verify one message and hand it to its sink, or drop and count it."""
        self._stats.received += 1
        session = self._session()
        if session is None:
            return
        try:
            parsed = parse_topic(topic)
        except ProtocolError:
            self._stats.invalid += 1
            return
        device = session.devices.get(parsed.device_id)
        if device is None:
            self._stats.invalid += 1
            return
        content_types = properties.get("content_type") or _NO_CONTENT_TYPE
        try:
            verified = verify_envelope(
                payload,
                topic=topic,
                content_type=content_types[0],
                key=device.signing_key,
                now_ms=now_ms(),
                decrypt_key=self._decrypt_key,
            )
        except ProtocolError as exc:
            self._stats.invalid += 1
            self._log.warning("amora-sync: dropped unverifiable message on %s: %s", topic, exc)
            return
        message = verified.message
        device_id = parsed.device_id
        if parsed.kind == TopicKind.STATE and isinstance(message, DeviceState) and message.device_id == device_id:
            self._on_state(message)
        elif (
            parsed.kind == TopicKind.CONNECTION
            and isinstance(message, ConnectionStatus)
            and message.device_id == device_id
        ):
            self._on_status(message)
        elif (
            parsed.kind == TopicKind.RESPONSES
            and isinstance(message, CommandResponse)
            and message.device_id == device_id
        ):
            if self._tracer is not None:
                self._tracer.received(message, properties.get("user_property") or ())
            self._on_response(message)
        else:
            self._stats.invalid += 1
            self._log.warning("amora-sync: dropped %s on %s (wrong type or device)", type(message).__name__, topic)
