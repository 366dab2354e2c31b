"""Broker account, role and group names: one spelling for the authz service and the tools.

The authz service creates these objects in mosquitto's dynamic-security plugin and the
development harness creates the same ones by hand; both must agree, and so must anyone
reading a broker's state. See docs/architecture.md ("Topics and their ACLs").

- role ``device:{id}``: a device's access to its own topics (`device_acls`);
- role ``user-device:{id}``: what a linked user's sessions may do with a device
  (`user_device_acls`);
- group ``user:{sub}``: a user's live sessions, holding ``user-device:{id}`` per linked device;
- client ``sess.{token}``: one per app session (username = client id); the dot keeps
  session ids apart from every valid device id (devices never contain a dot).
"""

from __future__ import annotations

from typing import Final

from amora_protocol._topics import validate_device_id

__all__ = [
    "SESSION_ID_PREFIX",
    "device_role",
    "is_session_id",
    "user_device_role",
    "user_group",
]

SESSION_ID_PREFIX: Final = "sess."
"""Every session id (and so every session's broker username and client id) starts with this."""


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
