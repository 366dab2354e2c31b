"""mosquitto's dynamic security, driven as the harness's admin account.

`dynsec` sends commands over MQTT (``$CONTROL/dynamic-security/v1``) and returns the
broker's answers; the helpers create and delete the objects the Amora layout uses (see
docs/architecture.md, "Topics and their ACLs"), named with amora-protocol's functions so
the harness and the authz service cannot drift apart. `initial_dynsec_state` is the state
file a fresh harness broker starts from: one admin account, deny by default.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from typing import TYPE_CHECKING, Any, Final

from amora_devtools._errors import DynsecError, MqttError
from amora_devtools._proc import wait_until
from amora_protocol import service_account_name

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from amora_devtools._mqtt import MqttClient
    from amora_devtools.broker import BrokerProcess

__all__ = [
    "ADMIN_USERNAME",
    "AMORA_AUTH_CONTROL_PATTERN",
    "AMORA_AUTH_RESPONSE_TOPIC",
    "AMORA_AUTH_TOPIC",
    "DYNSEC_TOPIC",
    "PROBE_TOPIC_PREFIX",
    "acl",
    "amora_auth",
    "create_device_client",
    "create_session_client",
    "delete_device_client",
    "delete_session_client",
    "dynsec",
    "initial_dynsec_state",
]

# Service accounts live under the reserved prefix (amora_protocol.SERVICE_ACCOUNT_PREFIX),
# so no device or user id can ever take them.
ADMIN_USERNAME: Final = service_account_name("harness-admin")
DYNSEC_TOPIC: Final = "$CONTROL/dynamic-security/v1"
AMORA_AUTH_TOPIC: Final = "$CONTROL/amora-auth/v1"
"""Revocations for the broker-token plugin (infra/broker-plugin); answers on ``.../response``."""
AMORA_AUTH_CONTROL_PATTERN: Final = "$CONTROL/amora-auth/#"
AMORA_AUTH_RESPONSE_TOPIC: Final = AMORA_AUTH_TOPIC + "/response"
PROBE_TOPIC_PREFIX: Final = "amora/harness"
"""The admin may publish here (and nowhere else): the harness's end-to-end bridge probe."""


def _hash_password(password: str) -> dict[str, Any]:
    """A dynsec password entry (PBKDF2-SHA512, as mosquitto_ctrl writes it)."""
    salt = secrets.token_bytes(12)
    iterations = 101
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def acl(acltype: str, topic: str, *, allow: bool = True) -> dict[str, Any]:
    """One dynsec ACL entry (priority 0)."""
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": allow}


def initial_dynsec_state(admin_password: str) -> dict[str, Any]:
    """Dynsec state: one admin (dynsec and amora-auth control, read everything), deny by default."""
    control = "$CONTROL/dynamic-security/#"
    return {
        "defaultACLAccess": [
            {"acltype": "publishClientSend", "allow": False},
            {"acltype": "publishClientReceive", "allow": False},
            {"acltype": "subscribe", "allow": False},
            {"acltype": "unsubscribe", "allow": False},
        ],
        "clients": [
            {
                "username": ADMIN_USERNAME,
                "textname": "Amora harness admin (development only)",
                "roles": [{"rolename": "admin"}],
                **_hash_password(admin_password),
            }
        ],
        "groups": [],
        "roles": [
            {
                "rolename": "admin",
                "textname": "dynsec administration; reads every topic, writes amora/harness/#",
                "acls": [
                    acl("publishClientSend", control),
                    acl("publishClientReceive", control),
                    acl("subscribePattern", control),
                    acl("unsubscribePattern", control),
                    # The broker-token plugin's revocations (amora_auth.so); harmless without it.
                    acl("publishClientSend", AMORA_AUTH_CONTROL_PATTERN),
                    acl("publishClientReceive", AMORA_AUTH_RESPONSE_TOPIC),
                    acl("subscribeLiteral", AMORA_AUTH_RESPONSE_TOPIC),
                    acl("unsubscribeLiteral", AMORA_AUTH_RESPONSE_TOPIC),
                    acl("publishClientReceive", "$SYS/#"),
                    acl("subscribePattern", "$SYS/#"),
                    acl("unsubscribePattern", "$SYS/#"),
                    acl("publishClientReceive", "#"),
                    acl("subscribePattern", "#"),
                    acl("unsubscribePattern", "#"),
                    acl("publishClientSend", f"{PROBE_TOPIC_PREFIX}/#"),
                ],
            }
        ],
    }


def dynsec(
    broker: BrokerProcess,
    commands: Sequence[Mapping[str, Any]],
    *,
    check: bool = True,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Send dynamic-security commands as the admin and return the broker's responses.

    One MQTT connection per call; the commands go in one request and the answer is the
    broker's ``responses`` list, in order.

    Args:
        broker: The broker to administer.
        commands: dynsec commands, e.g. ``{"command": "createClient", "username": ...}``.
        check: Raise `DynsecError` if any response carries an ``error``.
        timeout: Bound for connecting and for the answer, in seconds.

    Returns:
        One response dict per command (``{"command": ..., "error": ...?, "data": ...?}``).

    Raises:
        DynsecError: No answer in time, the connection failed, or (with ``check``) a
            command failed.
    """
    return _control(broker, DYNSEC_TOPIC, commands, check=check, timeout=timeout)


def amora_auth(
    broker: BrokerProcess,
    commands: Sequence[Mapping[str, Any]],
    *,
    check: bool = True,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Send broker-token plugin commands (``$CONTROL/amora-auth/v1``) as the admin.

    The broker must run the plugin (``start_broker(token_plugin=...)``). Commands are
    ``{"command": "revokeSessions", "sessions": [{"username": "sess.x", "until": 1764470000}]}``
    and ``{"command": "listRevocations"}``; arguments, answers and errors as for `dynsec`.
    """
    return _control(broker, AMORA_AUTH_TOPIC, commands, check=check, timeout=timeout)


def _control(
    broker: BrokerProcess,
    topic: str,
    commands: Sequence[Mapping[str, Any]],
    *,
    check: bool,
    timeout: float,
) -> list[dict[str, Any]]:
    request_id = uuid.uuid4().hex
    payload = json.dumps(
        {"commands": [{**cmd, "correlationData": f"{request_id}:{i}"} for i, cmd in enumerate(commands)]}
    ).encode()
    try:
        with broker.admin_client(timeout=timeout) as client:
            client.subscribe(f"{topic}/response")
            client.publish(topic, payload, qos=1)
            responses = _await_responses(client, request_id, timeout)
    except MqttError as exc:
        raise DynsecError(f"{topic} request to broker {broker.name} failed: {exc}") from exc
    if check:
        failures = tuple((str(r.get("command")), str(r["error"])) for r in responses if r.get("error"))
        if failures:
            raise DynsecError(f"broker {broker.name} refused {topic} commands", failures=failures)
    return responses


def _await_responses(client: MqttClient, request_id: str, timeout: float) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        message = client.receive(timeout=timeout)
        if message is None:
            raise DynsecError(f"no dynsec answer within {timeout}s")
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DynsecError(f"unreadable dynsec answer: {message.payload[:200]!r}") from exc
        ours = [r for r in responses if str(r.get("correlationData", "")).startswith(f"{request_id}:")]
        return ours or None

    result = wait_until(probe, timeout=timeout, interval=0)
    if result is None:
        raise DynsecError(f"no dynsec answer within {timeout}s")
    return result


def create_device_client(
    broker: BrokerProcess,
    device_id: str,
    *,
    acls: Iterable[tuple[str, str, bool]] | None = None,
) -> None:
    """Create role ``device:{id}`` with the device ACLs and a passwordless client ``id``.

    This is what the authz service does for a registered device: the device then
    connects on the device listener with a certificate whose CN is ``device_id``.

    Args:
        broker: Where.
        device_id: The device id (validated by amora-protocol).
        acls: ``(acltype, topic, allow)`` triples instead of
            ``amora_protocol.device_acls(device_id)``.

    Raises:
        DynsecError: The client or role exists already, or the broker refused.
    """
    from amora_protocol import device_acls, device_role  # noqa: PLC0415 - only callers need the protocol

    if acls is None:
        acls = device_acls(device_id)
    role = device_role(device_id)
    dynsec(
        broker,
        [
            {
                "command": "createRole",
                "rolename": role,
                "acls": [acl(t, topic, allow=allow) for t, topic, allow in acls],
            },
            {
                "command": "createClient",
                "username": device_id,
                "clientid": device_id,
                "textname": f"device {device_id}",
                "roles": [{"rolename": role}],
            },
        ],
    )


def delete_device_client(broker: BrokerProcess, device_id: str) -> None:
    """Delete the device's dynsec client (disconnecting it) and its role.

    Raises:
        DynsecError: The broker refused (e.g. no such client).
    """
    from amora_protocol import device_role  # noqa: PLC0415 - only callers need the protocol

    dynsec(
        broker,
        [
            {"command": "deleteClient", "username": device_id},
            {"command": "deleteRole", "rolename": device_role(device_id)},
        ],
    )


def create_session_client(
    broker: BrokerProcess,
    session_id: str,
    password: str,
    *,
    user: str,
    device_ids: Iterable[str],
) -> None:
    """Create an app session as docs/architecture.md ("Topics and their ACLs") lays it out.

    Roles ``user-device:{id}`` (``amora_protocol.user_device_acls``) are created when
    missing, group ``user:{user}`` is created when missing and given those roles, and
    client ``session_id`` (client id fixed to ``session_id``) joins the group.

    Raises:
        DynsecError: The client exists already, or the broker refused.
    """
    from amora_protocol import user_device_acls, user_device_role, user_group  # noqa: PLC0415 - only callers need it

    group = user_group(user)
    setup: list[dict[str, Any]] = [{"command": "createGroup", "groupname": group}]
    for device_id in device_ids:
        role = user_device_role(device_id)
        setup.append(
            {
                "command": "createRole",
                "rolename": role,
                "acls": [acl(a.acltype, a.topic, allow=a.allow) for a in user_device_acls(device_id)],
            }
        )
        setup.append({"command": "addGroupRole", "groupname": group, "rolename": role})
    for response in dynsec(broker, setup, check=False):
        error = str(response.get("error") or "")
        # Idempotent set-up: an existing group, role or membership is what we wanted.
        if error and "already" not in error.lower():
            raise DynsecError(
                f"broker {broker.name} refused session set-up",
                failures=((str(response.get("command")), error),),
            )
    dynsec(
        broker,
        [
            {
                "command": "createClient",
                "username": session_id,
                "password": password,
                "clientid": session_id,
                "textname": f"session of {user}",
                "groups": [{"groupname": group}],
            }
        ],
    )


def delete_session_client(broker: BrokerProcess, session_id: str) -> None:
    """Delete an app session's dynsec client (disconnecting it); groups and roles stay.

    Raises:
        DynsecError: The broker refused (e.g. no such client).
    """
    dynsec(broker, [{"command": "deleteClient", "username": session_id}])
