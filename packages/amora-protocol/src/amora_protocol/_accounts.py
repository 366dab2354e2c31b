"""Broker account, role and group names: one spelling for the authz service and the tools.

The authz service creates these objects in mosquitto's dynamic-security plugin and the
development harness creates the same ones by hand; both must agree, and so must anyone
reading a broker's state. See docs/architecture.md ("Topics and their ACLs").

- role ``device:{id}``: a device's access to its own topics (`device_acls`);
- role ``user-device:{id}``: what a linked user's sessions may do with a device
  (`user_device_acls`);
- group ``user:{sub}``: a user's live sessions, holding ``user-device:{id}`` per linked device;
- client ``sess.{token}``: one per app session (username = client id); the dot keeps
  session ids apart from every valid device id (devices never contain a dot);
- client ``svc.{name}``: a service account (the authz service's dynsec admin, a
  standby's bridge, operators' tools), see `service_account_name`.

Device ids, user ids (the issuer's ``sub``, validated like device ids by the authz
service), session accounts and service accounts are disjoint namespaces: both reserved
prefixes end in a dot, outside the device-id alphabet, so no device or user id can
take a session or service account name.
"""

from __future__ import annotations

import re
from typing import Final

from amora_protocol._topics import validate_device_id

__all__ = [
    "SERVICE_ACCOUNT_PREFIX",
    "SESSION_ID_PREFIX",
    "device_role",
    "is_reserved_account_name",
    "is_session_id",
    "service_account_name",
    "user_device_role",
    "user_group",
]

SESSION_ID_PREFIX: Final = "sess."
"""Every session id (and so every session's broker username and client id) starts with this."""

SERVICE_ACCOUNT_PREFIX: Final = "svc."
"""Prefix of every service account (authz's dynsec admin, bridges, operators' tools)."""

_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,59}")


def device_role(device_id: str) -> str:
    """Name of the role a device holds for its own topics: ``device:{id}``.

    Raises:
        InvalidDeviceId: ``device_id`` is not a valid device id.
    """
    return f"device:{validate_device_id(device_id)}"


def user_device_role(device_id: str) -> str:
    """Name of the role that lets a user's sessions use a device: ``user-device:{id}``.

    Raises:
        InvalidDeviceId: ``device_id`` is not a valid device id.
    """
    return f"user-device:{validate_device_id(device_id)}"


def user_group(user_sub: str) -> str:
    """Name of the group that holds a user's sessions: ``user:{sub}``.

    ``user_sub`` is the ``sub`` claim of the user's token as the authz service saw it.

    Raises:
        ValueError: ``user_sub`` is empty.
    """
    if not user_sub:
        msg = "a user's subject (the token's sub claim) must not be empty"
        raise ValueError(msg)
    return f"user:{user_sub}"


def is_session_id(name: str) -> bool:
    """Whether a broker username or client id names an app session (``sess.`` prefix)."""
    return name.startswith(SESSION_ID_PREFIX) and len(name) > len(SESSION_ID_PREFIX)


def service_account_name(name: str) -> str:
    """Return the broker username of the service account ``name`` (``svc.{name}``).

    Raises:
        ValueError: ``name`` is not 1-60 characters of ``[A-Za-z0-9_.-]`` starting
            with a letter or digit.
    """
    if not isinstance(name, str) or _SERVICE_NAME.fullmatch(name) is None:
        msg = (
            f"invalid service account name {name!r}: 1-60 characters of [A-Za-z0-9_.-], starting with a letter or digit"
        )
        raise ValueError(msg)
    return SERVICE_ACCOUNT_PREFIX + name


def is_reserved_account_name(name: str) -> bool:
    """Whether ``name`` lies in a namespace that no device or user may take (``svc.``, ``sess.``)."""
    return name.startswith((SERVICE_ACCOUNT_PREFIX, SESSION_ID_PREFIX))
