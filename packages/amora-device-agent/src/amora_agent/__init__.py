"""Amora's player agent: MPD <-> MQTT 5 with signed state, verified commands and a Last Will.

Run it with ``amora-agent run --config FILE``; embed it (tests, simulated fleets) with
`Agent` over an `MpdPlayer` or a `SimulatedPlayer`.
"""

from amora_agent._agent import AGENT_VERSION, Agent, AgentOptions
from amora_agent._build import agent_from_config
from amora_agent._config import (
    AgentConfig,
    BrokerEndpoint,
    IoTHubConfig,
    KeysConfig,
    LogLevel,
    MqttConfig,
    PlayerConfig,
    PlayerKind,
    TlsConfig,
    client_ssl_context,
    load_config,
    parse_verify_key,
)
from amora_agent._errors import (
    AgentError,
    ConfigError,
    ManagementError,
    PlayerError,
    PlayerUnavailable,
    StateDirError,
)
from amora_agent._iothub import IoTHubPlane
from amora_agent._logging import configure_logging
from amora_agent._management import DesiredSettings, ManagementHost, ManagementPlane, parse_desired
from amora_agent._mpd import MpdPlayer, snapshot_from_mpd
from amora_agent._persist import VersionCounter
from amora_agent._player import ChangeCallback, Player, PlayerSnapshot
from amora_agent._replaylog import ReplayLog
from amora_agent._sim import SimulatedPlayer
from amora_protocol import Backoff

__all__ = [
    "AGENT_VERSION",
    "Agent",
    "AgentConfig",
    "AgentError",
    "AgentOptions",
    "Backoff",
    "BrokerEndpoint",
    "ChangeCallback",
    "ConfigError",
    "DesiredSettings",
    "IoTHubConfig",
    "IoTHubPlane",
    "KeysConfig",
    "LogLevel",
    "ManagementError",
    "ManagementHost",
    "ManagementPlane",
    "MpdPlayer",
    "MqttConfig",
    "Player",
    "PlayerConfig",
    "PlayerError",
    "PlayerKind",
    "PlayerSnapshot",
    "PlayerUnavailable",
    "ReplayLog",
    "SimulatedPlayer",
    "StateDirError",
    "TlsConfig",
    "VersionCounter",
    "agent_from_config",
    "client_ssl_context",
    "configure_logging",
    "load_config",
    "parse_desired",
    "parse_verify_key",
    "snapshot_from_mpd",
]
