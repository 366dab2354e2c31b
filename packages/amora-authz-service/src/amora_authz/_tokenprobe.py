"""Token mode: check that a broker accepts the service's tokens (security review F7).

A session login in token mode writes nothing to the brokers, so nothing else would notice a
broker that refuses every token the service signs (its plugin loads another public key, a
rotation done on the broker before the service, another issuer or audience): logins would
answer 201 with credentials that no CONNECT accepts. Each full pass therefore connects once
with a short-lived token for :data:`PROBE_USERNAME` and reports a refusal.

The probe's name starts with the plugin's ``sess.`` prefix, so the plugin alone decides it
(never dynamic security), and it can never be a real session: session ids are ``sess.``
followed by 32 lowercase hex digits (``amora_authz._service``), and ``-`` is not one. Its
token carries an empty ACL, which the plugin evaluates as deny for every publish and
subscribe; the connection is closed as soon as the broker answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final

import gmqtt
from gmqtt.mqtt.constants import MQTTv50

from amora_authz._control import client_tls
from amora_authz._errors import BrokerError
from amora_authz._gmqtt import new_client
from amora_protocol import SESSION_ID_PREFIX

if TYPE_CHECKING:
    from amora_authz._brokertoken import BrokerTokenKey
    from amora_authz._dynsec import BrokerEndpoint

__all__ = ["PROBE_LIFETIME_S", "PROBE_SUBJECT", "PROBE_USERNAME", "probe_token"]

PROBE_USERNAME: Final = f"{SESSION_ID_PREFIX}amora-probe"
"""The probe's MQTT username and client id: under the plugin's prefix, never a session id."""
PROBE_SUBJECT: Final = "amora-authz-probe"
"""The probe token's ``sub``: no user (user ids are device-id-like names, checked at login)."""
PROBE_LIFETIME_S: Final = 60
"""The probe token's lifetime: long enough for a broker clock 60 s behind, short enough to be
useless to whoever might read it from a log."""


async def probe_token(endpoint: BrokerEndpoint, key: BrokerTokenKey, *, now_s: int, timeout_s: float) -> str | None:
    """Connect to ``endpoint`` once with a probe token; None if accepted, else the broker's refusal.

    Raises:
        BrokerError: the broker could not be reached or did not answer (``broker_unreachable``).
    """
    token = key.issue(
        subject=PROBE_SUBJECT,
        username=PROBE_USERNAME,
        client_id=PROBE_USERNAME,
        devices=(),
        issued_at_s=now_s,
        expires_at_s=now_s + PROBE_LIFETIME_S,
    )
    client = new_client(PROBE_USERNAME)
    client.set_auth_credentials(PROBE_USERNAME, token)
    try:
        async with asyncio.timeout(timeout_s):
            await client.connect(endpoint.host, endpoint.port, ssl=client_tls(endpoint), keepalive=30, version=MQTTv50)
    except gmqtt.MQTTConnectError as exc:
        return str(exc)
    except Exception as exc:  # gmqtt raises OSError, SSLError and its own errors: all mean unreachable
        raise BrokerError(
            f"cannot connect to broker {endpoint.name} at {endpoint.host}:{endpoint.port} with a probe token: {exc!r}",
            broker=endpoint.name,
            code="broker_unreachable",
        ) from exc
    finally:
        with contextlib.suppress(Exception):  # closing a refused or dead connection may fail any way
            await client.disconnect()
    return None
