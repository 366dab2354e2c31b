"""How the service makes its gmqtt clients: gmqtt's own reconnect switched off.

The service holds two kinds of MQTT link per broker, the dynsec control client
(`amora_authz._control`) and the session-list publisher (`amora_authz._sessionlists`).
Both notice a lost connection themselves and open a fresh client on their next use
(docs/decisions/0003-packages-own-reconnection.md). gmqtt must therefore never reconnect
the old client behind their back: that would leave a second connection for the same
account, and for the dynsec client (one client id per link) kick the fresh one.
"""

from __future__ import annotations

from typing import Final

import gmqtt

__all__ = ["NO_RECONNECT", "new_client"]

NO_RECONNECT: Final = -2
"""gmqtt's ``reconnect_retries`` value that switches its reconnect off.

gmqtt reconnects while its failed attempts are ``<= reconnect_retries``, with -1 meaning
unlimited: 0 still reconnects once after a loss (after ``reconnect_delay``), and only a
value below -1 allows none.
"""


def new_client(client_id: str) -> gmqtt.Client:
    """A clean-session gmqtt client that never reconnects by itself."""
    client = gmqtt.Client(client_id, clean_session=True)
    client.set_config({"reconnect_retries": NO_RECONNECT})
    return client
