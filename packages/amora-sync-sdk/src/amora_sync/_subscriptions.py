"""Subscriptions and resync: which topics a session listens to, subscribed after every connect.

Subscribing again after every reconnect, even when the broker kept the session, makes the
broker send the retained state and status of every device again: that is the resync (the
cache drops duplicates and older versions by version).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amora_protocol import connection_topic, responses_topic, state_topic
from amora_sync._link import LinkError

if TYPE_CHECKING:
    import logging
    from collections.abc import Iterable

    from amora_sync._link import Link

__all__ = ["Subscriber", "device_topics"]

_SUBACK_FAILURE = 0x80


def device_topics(device_ids: Iterable[str]) -> list[str]:
    """Return the topics an app listens to for `device_ids`: state, connection, responses."""
    topics: list[str] = []
    for device_id in device_ids:
        topics.extend((state_topic(device_id), connection_topic(device_id), responses_topic(device_id)))
    return topics


class Subscriber:
    """Subscribes a link to the devices' topics (QoS 1), logging what the broker refuses."""

    def __init__(self, *, limit: float, logger: logging.Logger) -> None:
        """Wait at most `limit` seconds for each SUBACK."""
        self._limit = limit
        self._log = logger

    async def subscribe(self, link: Link, device_ids: Iterable[str]) -> None:
        """Subscribe `link` to every topic of `device_ids` in one SUBSCRIBE.

        Raises:
            LinkError: No SUBACK in time, or the link dropped.
        """
        topics = device_topics(device_ids)
        if not topics:
            return
        granted = await link.subscribe(topics, qos=1, limit=self._limit)
        refused = [t for t, code in zip(topics, granted, strict=False) if code >= _SUBACK_FAILURE]
        if refused:
            self._log.warning("amora-sync: broker refused subscriptions: %s", refused)

    async def subscribe_added(self, link: Link, device_ids: list[str]) -> None:
        """Subscribe to devices that joined the session while connected (best effort)."""
        try:
            await self.subscribe(link, device_ids)
        except LinkError as exc:
            # The next connection subscribes to every session device anyway.
            self._log.info("amora-sync: subscribing to new devices failed: %s", exc)
