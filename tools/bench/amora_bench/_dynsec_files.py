"""Dynamic-security file contents for the benchmarks: accounts written before a broker starts.

Creating thousands of accounts one dynsec command at a time is the very cost the login
benchmarks measure (mosquitto 2.0 rewrites its file per command), so they are written into
the file while the broker is stopped. Group membership lives in the group's ``clients`` list
in mosquitto's file format.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from amora_devtools.broker import BrokerProcess

__all__ = ["FILLER", "MANAGED", "dynsec_rate", "group", "hashed", "preload", "session_account"]

MANAGED = "managed-by:amora-authz"
FILLER = "bench-filler"  # accounts the authz service does not own: it leaves them alone


def hashed(password: str) -> dict[str, Any]:
    """A dynsec password entry (PBKDF2-SHA512, 101 iterations, as mosquitto writes it)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, dklen=64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": 101,
    }


def session_account(name: str, password: str, *, textname: str = MANAGED) -> dict[str, Any]:
    """A dynsec client as the authz service creates one for a session (same fields, same size).

    Group membership lives in the group's ``clients`` list in mosquitto's file (`_group`).
    """
    return {"username": name, "clientid": name, "textname": textname, "roles": [], **hashed(password)}


def group(name: str, members: Iterable[str], roles: Iterable[str] = ()) -> dict[str, Any]:
    """A dynsec group with its members and roles, as mosquitto's file holds it."""
    return {
        "groupname": name,
        "textname": MANAGED,
        "roles": [{"rolename": r, "priority": -1} for r in roles],
        "clients": [{"username": m, "priority": -1} for m in members],
    }


def preload(
    broker: BrokerProcess,
    *,
    clients: Iterable[dict[str, Any]] = (),
    groups: Iterable[dict[str, Any]] = (),
    roles: Iterable[dict[str, Any]] = (),
) -> None:
    """Add objects to the broker's dynsec file while it is stopped, then start it again."""
    broker.stop()
    document = json.loads(broker.dynsec_file.read_text())
    document["clients"].extend(clients)
    document["groups"].extend(groups)
    document["roles"].extend(roles)
    # Written in place: the file keeps its owner (the broker's user) and mode.
    broker.dynsec_file.write_text(json.dumps(document))
    broker.restart()


def dynsec_rate(broker: BrokerProcess, *, count: int = 30, group: str | None = None) -> float:
    """``createClient`` commands per second, one per message on one connection, at the broker's size."""
    from amora_devtools.dynsec import DYNSEC_TOPIC  # noqa: PLC0415 - only scenarios with a broker need it

    prefix = secrets.token_hex(4)
    names = [f"sess.rate{prefix}{i:020d}" for i in range(count)]
    with broker.admin_client(timeout=60) as admin:
        admin.subscribe(f"{DYNSEC_TOPIC}/response")

        def send(command: dict[str, Any]) -> None:
            admin.publish(DYNSEC_TOPIC, json.dumps({"commands": [command]}).encode(), qos=1)
            if admin.receive(timeout=60) is None:
                msg = "no dynsec answer within 60 s"
                raise RuntimeError(msg)

        start = time.perf_counter()
        for name in names:
            command: dict[str, Any] = {"command": "createClient", "username": name, "password": "x"}
            command["textname"] = MANAGED
            if group is not None:
                command["groups"] = [{"groupname": group}]
            send(command)
        rate = count / (time.perf_counter() - start)
        for name in names:
            send({"command": "deleteClient", "username": name})
    return round(rate, 1)
