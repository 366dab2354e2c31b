"""Amora sync SDK: watch players' verified state and send them signed commands.

```python
async with AmoraClient(authz_url, token_provider, ca_file=ca) as client:
    async with client.watch() as events:
        async for event in events:
            ...
    response = await client.command("player-1", Pause())
```

The protocol's message and action types (`DeviceState`, `Play`, `SetVolume`, ...)
are re-exported for convenience.
"""

from importlib.metadata import PackageNotFoundError, version

from amora_protocol import (
    Action,
    ChangeVolume,
    CommandResponse,
    CommandStatus,
    ConnectionStatus,
    DeviceState,
    Next,
    Pause,
    Ping,
    Play,
    PlaybackStatus,
    PlayQueueItem,
    Previous,
    RejectReason,
    Seek,
    SetVolume,
    Stop,
    Toggle,
)
from amora_sync._cache import Watch, WatchEvent
from amora_sync._client import AmoraClient
from amora_sync._connection import ConnectionInfo, ConnectionState
from amora_sync._errors import (
    AmoraSyncError,
    AuthenticationError,
    AuthzUnavailableError,
    ClientClosedError,
    ClockSkewError,
    CommandError,
    CommandExpiredError,
    CommandRejectedError,
    CommandTimeoutError,
    ConnectError,
    DeviceBusyError,
    InvalidCommandError,
    InvalidDeviceIdError,
    OutboxFullError,
    RateLimitedError,
    SessionError,
    UnknownDeviceError,
)
from amora_sync._flow import DEFAULT_CONNECT_TIMEOUT, ReconnectPolicy
from amora_sync._session import BrokerCredentials, DeviceInfo, Endpoint, Session, TokenProvider
from amora_sync._session_store import FileSessionStore, SessionStore
from amora_sync._stats import ClientStats

try:
    __version__ = version("amora-sync-sdk")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "Action",
    "AmoraClient",
    "AmoraSyncError",
    "AuthenticationError",
    "AuthzUnavailableError",
    "BrokerCredentials",
    "ChangeVolume",
    "ClientClosedError",
    "ClientStats",
    "ClockSkewError",
    "CommandError",
    "CommandExpiredError",
    "CommandRejectedError",
    "CommandResponse",
    "CommandStatus",
    "CommandTimeoutError",
    "ConnectError",
    "ConnectionInfo",
    "ConnectionState",
    "ConnectionStatus",
    "DeviceBusyError",
    "DeviceInfo",
    "DeviceState",
    "Endpoint",
    "FileSessionStore",
    "InvalidCommandError",
    "InvalidDeviceIdError",
    "Next",
    "OutboxFullError",
    "Pause",
    "Ping",
    "Play",
    "PlayQueueItem",
    "PlaybackStatus",
    "Previous",
    "RateLimitedError",
    "ReconnectPolicy",
    "RejectReason",
    "Seek",
    "Session",
    "SessionError",
    "SessionStore",
    "SetVolume",
    "Stop",
    "Toggle",
    "TokenProvider",
    "UnknownDeviceError",
    "Watch",
    "WatchEvent",
    "__version__",
]
