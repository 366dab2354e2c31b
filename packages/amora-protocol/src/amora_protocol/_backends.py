"""Backend services: their broker account names, roles, topics and ACLs (docs/architecture.md).

A backend is a named service (analytics, a support desk, an ingest pipeline) that reads or
writes device topics across the whole fleet, unlike an app session, which reaches only its
user's devices. The authz service creates its broker accounts and the SDK's
`amora_sync.backend` consumer uses the same names and topics, so both are spelled here.

- accounts ``svc.backend.{name}.{n}``, one per replica slot ``n`` (1..``replicas``), each
  bound to the client id of the same name: a backend never picks a client id of its own, so
  it cannot take over a device's or a session's connection. ``svc.`` is the reserved
  service namespace (`amora_protocol.service_account_name`).
- role ``svc.backend.{name}``: what the backend may do, from its `BackendRole`;
- shared subscriptions ``$share/{name}/amora/devices/+/{kind}``: the replicas of one backend
  split the messages; the share group is the backend's own name, so one backend cannot
  drain another's group, and a plain (unshared) fleet-wide subscription is refused;
- presence ``amora/backends/{name}/replicas/{n}``: retained, written by each replica (its Last
  Will clears it), read by the others so that a survivor takes over a dead replica's
  session (`amora_sync.backend`).
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Final

import msgspec

from amora_protocol._accounts import service_account_name
from amora_protocol._sessions import DevicePublicKeys  # noqa: TC001 - msgspec resolves field types at runtime
from amora_protocol._topics import TOPIC_PREFIX, TopicAcl, TopicKind

__all__ = [
    "BACKEND_NAME_PATTERN",
    "BACKEND_TOPIC_PREFIX",
    "MAX_BACKEND_REPLICAS",
    "BackendGrantRequest",
    "BackendGrantResponse",
    "BackendRole",
    "DeviceKeyPage",
    "backend_account",
    "backend_acls",
    "backend_kinds",
    "backend_replica_account",
    "backend_replica_topic",
    "fleet_topic",
    "shared_subscription",
    "validate_backend_name",
]

BACKEND_NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{0,31}$"
"""A backend's name: also its share group, so no ``/``, ``+``, ``#`` or ``.``."""
_NAME = re.compile(BACKEND_NAME_PATTERN)
MAX_BACKEND_REPLICAS: Final = 16
BACKEND_TOPIC_PREFIX: Final = "amora/backends/"


class BackendRole(enum.StrEnum):
    """What a backend may do (a small fixed set; deny by default beyond it)."""

    ANALYTICS = "analytics"
    """Read every device's state and connection status (shared subscriptions)."""
    SUPPORT = "support"
    """Send commands to any device (under grants the authz service signs for it) and read responses."""
    INGEST = "ingest"
    """Read every device's command responses (shared subscriptions)."""


def validate_backend_name(name: str) -> str:
    """Return ``name`` unchanged if it is a valid backend name.

    Raises:
        ValueError: Not 1-32 characters of ``[a-z0-9-]`` starting with a letter or digit.
    """
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        msg = f"invalid backend name {name!r}: use 1-32 characters of [a-z0-9-], starting with a letter or digit"
        raise ValueError(msg)
    return name


def backend_account(name: str) -> str:
    """The backend's base name ``svc.backend.{name}``: its role, and the session id its grants name.

    Raises:
        ValueError: ``name`` is not a valid backend name.
    """
    return service_account_name(f"backend.{validate_backend_name(name)}")


def backend_replica_account(name: str, replica: int) -> str:
    """The broker username (= client id) of replica slot ``replica`` (1-based).

    Raises:
        ValueError: invalid name, or ``replica`` outside 1..`MAX_BACKEND_REPLICAS`.
    """
    if not 1 <= replica <= MAX_BACKEND_REPLICAS:
        msg = f"replica {replica} is outside 1..{MAX_BACKEND_REPLICAS}"
        raise ValueError(msg)
    return f"{backend_account(name)}.{replica}"


def fleet_topic(kind: TopicKind) -> str:
    """The wildcard topic of one kind across every device (``amora/devices/+/state``)."""
    return f"{TOPIC_PREFIX}+/{kind.value}"


def shared_subscription(name: str, kind: TopicKind) -> str:
    """The shared subscription of backend ``name`` to ``kind`` on every device.

    Raises:
        ValueError: ``name`` is not a valid backend name.
    """
    return f"$share/{validate_backend_name(name)}/{fleet_topic(kind)}"


def backend_replica_topic(name: str, replica: int | None = None) -> str:
    """The presence topic of one replica slot, or (``None``) the wildcard over all of them.

    Raises:
        ValueError: ``name`` is not a valid backend name.
    """
    level = "+" if replica is None else str(replica)
    return f"{BACKEND_TOPIC_PREFIX}{validate_backend_name(name)}/replicas/{level}"


def backend_kinds(role: BackendRole) -> tuple[TopicKind, ...]:
    """The device topics a backend of ``role`` reads."""
    if role is BackendRole.ANALYTICS:
        return (TopicKind.STATE, TopicKind.CONNECTION)
    return (TopicKind.RESPONSES,)


def backend_acls(name: str, role: BackendRole) -> tuple[TopicAcl, ...]:
    """The access of backend ``name`` (its role ``svc.backend.{name}``).

    Every role reads its kinds only through its own share group (a plain ``+`` subscription
    has no ACL and is refused), keeps its replicas' presence, and a support backend also
    publishes commands (devices check the grant inside each one).
    """
    acls: list[TopicAcl] = []
    for kind in backend_kinds(role):
        shared = shared_subscription(name, kind)
        acls += [
            TopicAcl("subscribePattern", shared),
            TopicAcl("unsubscribePattern", shared),
            TopicAcl("publishClientReceive", fleet_topic(kind)),
        ]
    if role is BackendRole.SUPPORT:
        acls.append(TopicAcl("publishClientSend", fleet_topic(TopicKind.COMMANDS)))
    presence = backend_replica_topic(name)
    acls += [
        TopicAcl("publishClientSend", presence),
        TopicAcl("subscribePattern", presence),
        TopicAcl("unsubscribePattern", presence),
        TopicAcl("publishClientReceive", presence),
    ]
    return tuple(acls)


_DeviceIdText = Annotated[str, msgspec.Meta(max_length=64)]


class DeviceKeyPage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """``GET /v1/backend/devices``: one page of active devices' public keys, by device id.

    Attributes:
        devices: the page.
        next: pass it as ``after`` for the next page; ``None`` on the last one.
    """

    devices: tuple[DevicePublicKeys, ...]
    next: str | None = None


class BackendGrantRequest(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """``POST /v1/backend/grants`` (support backends): a grant for a key pair the backend holds.

    Attributes:
        signing_key: base64 of the raw Ed25519 public key its commands will be signed with.
        encryption_key: base64 of the raw X25519 public key (sealed answers).
        devices: the devices the grant is to cover (at most 500).
    """

    signing_key: Annotated[str, msgspec.Meta(max_length=64)]
    encryption_key: Annotated[str, msgspec.Meta(max_length=64)]
    devices: Annotated[
        tuple[Annotated[str, msgspec.Meta(max_length=64)], ...], msgspec.Meta(min_length=1, max_length=500)
    ]


class BackendGrantResponse(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The grant (base64 of the token) and what it says.

    Attributes:
        grant: base64 of the grant token (`amora_protocol.issue_grant`).
        session_id: the session id it names (``svc.backend.{name}``: on every device's session list).
        expires_at: its expiry (ms since the epoch).
        devices: the devices it covers, with their keys.
    """

    grant: str
    session_id: str
    expires_at: int
    devices: tuple[DevicePublicKeys, ...]
