"""The broker account the link adapters' tests connect with (`_mqtt.MqttLink`, `_websocket.WebSocketLink`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from amora_devtools.broker import dynsec

if TYPE_CHECKING:
    from amora_devtools.broker import BrokerProcess

ADAPTER_USER = "adapter-test"
ADAPTER_TOPICS = "amora/adapter/#"


def adapter_account(broker: BrokerProcess, *, password: str = "pw") -> None:  # noqa: S107 - a test account
    """Create the user ``adapter-test`` (this password), allowed everything on ``amora/adapter/#``."""
    acls = [
        {"acltype": kind, "topic": ADAPTER_TOPICS, "priority": 0, "allow": True}
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]
    dynsec(
        broker,
        [
            {"command": "createRole", "rolename": ADAPTER_USER, "acls": acls},
            {
                "command": "createClient",
                "username": ADAPTER_USER,
                "password": password,
                "roles": [{"rolename": ADAPTER_USER}],
            },
        ],
    )
