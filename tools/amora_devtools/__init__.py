"""Amora developer tools: real local services for tests and manual work.

Importing this package starts nothing and installs nothing. The harness starts
Debian's mosquitto, mpd and PostgreSQL on free loopback ports (``tools/dev`` installs
them with apt-get). The development PKI is for development only: production keys and
certificates never come from it.
"""

from amora_devtools._errors import (
    DevtoolsError,
    DynsecError,
    MqttError,
    MqttRefused,
    PkiError,
    ServiceStartError,
)
from amora_devtools._gmqtt import NO_RECONNECT
from amora_devtools._mqtt import Message, MqttClient, Will, client_ssl_context
from amora_devtools.broker import BrokerProcess, start_broker, start_broker_pair
from amora_devtools.dynsec import (
    create_device_client,
    create_session_client,
    delete_device_client,
    delete_session_client,
    dynsec,
)
from amora_devtools.mpd import MpdProcess, start_mpd
from amora_devtools.music import Track
from amora_devtools.pki import ClientCert, DevPKI
from amora_devtools.postgres import PostgresProcess, start_postgres

__all__ = [
    "NO_RECONNECT",
    "BrokerProcess",
    "ClientCert",
    "DevPKI",
    "DevtoolsError",
    "DynsecError",
    "Message",
    "MpdProcess",
    "MqttClient",
    "MqttError",
    "MqttRefused",
    "PkiError",
    "PostgresProcess",
    "ServiceStartError",
    "Track",
    "Will",
    "client_ssl_context",
    "create_device_client",
    "create_session_client",
    "delete_device_client",
    "delete_session_client",
    "dynsec",
    "start_broker",
    "start_broker_pair",
    "start_mpd",
    "start_postgres",
]
