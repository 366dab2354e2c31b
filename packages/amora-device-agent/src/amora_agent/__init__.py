"""Amora's player agent: MPD <-> MQTT 5 with signed state, verified commands and a Last Will.

Run it with ``amora-agent run --config FILE``; embed it (tests, simulated fleets) with
`Agent` over an `MpdPlayer` or a `SimulatedPlayer`.
"""

from amora_agent._agent import AGENT_VERSION, Agent, AgentOptions
from amora_agent._build import agent_from_config
from amora_agent._config import (
    AgentConfig,
    BrokerEndpoint,
    TelemetryConfig,
    TlsConfig,
    client_ssl_context,
    load_config,
)
from amora_agent._errors import AgentError, ConfigError, ManagementError, PlayerError, PlayerUnavailable, StateDirError
from amora_agent._iothub import IoTHubPlane
from amora_agent._management import DesiredSettings, ManagementHost, ManagementPlane
from amora_agent._mpd import MpdPlayer
from amora_agent._player import ChangeCallback, Player, PlayerSnapshot
from amora_agent._sim import SimulatedPlayer
from amora_agent._telemetry import AgentTelemetry

__all__ = [
    "AGENT_VERSION",
    "Agent",
    "AgentConfig",
    "AgentError",
    "AgentOptions",
    "AgentTelemetry",
    "BrokerEndpoint",
    "ChangeCallback",
    "ConfigError",
    "DesiredSettings",
    "IoTHubPlane",
    "ManagementError",
    "ManagementHost",
    "ManagementPlane",
    "MpdPlayer",
    "Player",
    "PlayerError",
    "PlayerSnapshot",
    "PlayerUnavailable",
    "SimulatedPlayer",
    "StateDirError",
    "TelemetryConfig",
    "TlsConfig",
    "agent_from_config",
    "client_ssl_context",
    "load_config",
]
