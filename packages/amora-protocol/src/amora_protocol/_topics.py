"""Topic names: the contract other teams code against (docs/architecture.md, "Topics and their ACLs")."""

from __future__ import annotations

import enum
import re
from typing import Final, NamedTuple

from amora_protocol._errors import InvalidDeviceId, TopicError

__all__ = [
    "DEVICE_ID_PATTERN",
    "TOPIC_PREFIX",
    "ParsedTopic",
    "TopicAcl",
    "TopicKind",
    "commands_topic",
    "connection_topic",
    "device_acls",
    "device_topic",
    "parse_topic",
    "responses_topic",
    "sessions_topic",
    "state_topic",
    "user_device_acls",
    "validate_device_id",
]

TOPIC_PREFIX: Final = "amora/devices/"
DEVICE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


class TopicKind(enum.StrEnum):
    """The four per-device topics, by their last topic level."""

    STATE = "state"
    COMMANDS = "commands"
    RESPONSES = "responses"
    CONNECTION = "connection"


class ParsedTopic(NamedTuple):
    """A topic taken apart."""

    device_id: str
    kind: TopicKind


class TopicAcl(NamedTuple):
    """One access rule in mosquitto dynamic-security terms.

    ``acltype`` is a dynsec ACL type (``publishClientSend``, ``publishClientReceive``,
    ``subscribePattern``, ``unsubscribePattern``).
    """

    acltype: str
    topic: str
    allow: bool = True


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` unchanged if valid.

    Raises:
        InvalidDeviceId: Not 1-64 chars of ``[A-Za-z0-9_-]`` starting with a letter or digit.
    """
    # fullmatch on str only: `$` would accept a trailing newline with match().
    if not isinstance(device_id, str) or _DEVICE_ID.fullmatch(device_id) is None:
        raise InvalidDeviceId(device_id)
    return device_id


def device_topic(device_id: str, kind: TopicKind) -> str:
    """Return the topic of ``kind`` for ``device_id``.

    Raises:
        InvalidDeviceId: If the id is not valid.
    """
    return f"{TOPIC_PREFIX}{validate_device_id(device_id)}/{kind.value}"


def state_topic(device_id: str) -> str:
    """Topic where the device publishes its retained, signed `DeviceState`."""
    return device_topic(device_id, TopicKind.STATE)


def commands_topic(device_id: str) -> str:
    """Topic where apps publish signed `Command` envelopes for the device."""
    return device_topic(device_id, TopicKind.COMMANDS)


def responses_topic(device_id: str) -> str:
    """Topic where the device answers commands with signed `CommandResponse` envelopes."""
    return device_topic(device_id, TopicKind.RESPONSES)


def connection_topic(device_id: str) -> str:
    """Topic of the device's retained `ConnectionStatus` (also its Last Will)."""
    return device_topic(device_id, TopicKind.CONNECTION)


def sessions_topic(device_id: str) -> str:
    """Topic of the device's retained `SessionList`, written by the authz service only.

    Not a `TopicKind`: it carries no envelope, and only the authz service publishes there.
    """
    return f"{TOPIC_PREFIX}{validate_device_id(device_id)}/sessions"


def parse_topic(topic: str) -> ParsedTopic:
    """Take an Amora device topic apart.

    Raises:
        TopicError: The topic is not ``amora/devices/{device_id}/{kind}``.
        InvalidDeviceId: The device id level is not a valid id.
    """
    if not topic.startswith(TOPIC_PREFIX):
        raise TopicError(topic, f"does not start with {TOPIC_PREFIX!r}")
    parts = topic[len(TOPIC_PREFIX) :].split("/")
    if len(parts) != 2:
        raise TopicError(topic, "expected amora/devices/{device_id}/{kind}")
    device_id, kind = parts
    try:
        parsed_kind = TopicKind(kind)
    except ValueError:
        raise TopicError(topic, f"unknown kind {kind!r}") from None
    return ParsedTopic(validate_device_id(device_id), parsed_kind)


def device_acls(device_id: str) -> tuple[TopicAcl, ...]:
    """The access a device needs for itself (its broker role ``device:{id}``).

    It publishes state, responses and connection (also the Last Will) and reads its commands
    and the session list the authz service keeps for it (revocation).
    It also reads its own connection topic: a stale Last Will delivered late (by a resumed
    broker, through a bridge) is corrected at once, and re-subscribing to it is the
    device's end-to-end liveness probe of the broker.
    """
    return (
        TopicAcl("publishClientSend", state_topic(device_id)),
        TopicAcl("publishClientSend", responses_topic(device_id)),
        TopicAcl("publishClientSend", connection_topic(device_id)),
        TopicAcl("subscribePattern", commands_topic(device_id)),
        TopicAcl("publishClientReceive", commands_topic(device_id)),
        TopicAcl("unsubscribePattern", commands_topic(device_id)),
        TopicAcl("subscribePattern", connection_topic(device_id)),
        TopicAcl("publishClientReceive", connection_topic(device_id)),
        TopicAcl("unsubscribePattern", connection_topic(device_id)),
        TopicAcl("subscribePattern", sessions_topic(device_id)),
        TopicAcl("publishClientReceive", sessions_topic(device_id)),
        TopicAcl("unsubscribePattern", sessions_topic(device_id)),
    )


def user_device_acls(device_id: str) -> tuple[TopicAcl, ...]:
    """The access an app session needs for one device (broker role ``user-device:{id}``).

    It reads state, connection and responses, and publishes commands.
    """
    acls: list[TopicAcl] = []
    for kind in (TopicKind.STATE, TopicKind.CONNECTION, TopicKind.RESPONSES):
        topic = device_topic(device_id, kind)
        acls += [
            TopicAcl("subscribePattern", topic),
            TopicAcl("publishClientReceive", topic),
            TopicAcl("unsubscribePattern", topic),
        ]
    acls.append(TopicAcl("publishClientSend", commands_topic(device_id)))
    return tuple(acls)
