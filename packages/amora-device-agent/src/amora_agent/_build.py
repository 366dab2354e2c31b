"""Building an agent from its configuration file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from amora_agent._agent import Agent, AgentOptions
from amora_agent._config import AgentConfig, PlayerKind, client_ssl_context
from amora_agent._errors import ConfigError
from amora_agent._iothub import IoTHubPlane
from amora_agent._mpd import MpdPlayer
from amora_agent._sim import SimulatedPlayer
from amora_agent._telemetry import AgentTelemetry

if TYPE_CHECKING:
    import structlog

    from amora_agent._management import ManagementPlane
    from amora_agent._player import Player

__all__ = ["agent_from_config"]


def _read(path: str, key: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=key) from exc


def _management(config: AgentConfig, logger: structlog.typing.FilteringBoundLogger | None) -> ManagementPlane | None:
    hub = config.iothub
    if hub is None:
        return None
    if hub.connection_string is not None:
        connection_string = hub.connection_string
    elif hub.connection_string_file is not None:
        connection_string = _read(hub.connection_string_file, "iothub.connection_string_file")
    else:
        raise ConfigError("needs connection_string or connection_string_file", key="iothub")
    server_ca = _read(hub.server_ca_file, "iothub.server_ca_file") if hub.server_ca_file else None
    return IoTHubPlane(
        connection_string,
        server_ca=server_ca,
        telemetry_interval_s=hub.telemetry_interval_s,
        logger=logger,
    )


def agent_from_config(
    config: AgentConfig,
    *,
    player: Player | None = None,
    logger: structlog.typing.FilteringBoundLogger | None = None,
    telemetry: AgentTelemetry | None = None,
) -> Agent:
    """Build the agent (and its player and management plane) that ``config`` describes.

    Args:
        config: The loaded configuration.
        player: Use this player instead of the configured one.
        logger: A structlog logger.
        telemetry: Instruments and tracer (default: on the process's global providers).

    Raises:
        ConfigError: Keys, certificates or other files cannot be used.
        StateDirError: The state directory cannot be used.
    """
    telemetry = telemetry if telemetry is not None else AgentTelemetry()
    if player is None:
        if config.player.kind is PlayerKind.MPD:
            player = MpdPlayer(
                config.player.host,
                config.player.port,
                password=config.player.password,
                logger=logger,
                on_reconnect=lambda: telemetry.mpd_reconnects.add(1),
            )
        else:
            player = SimulatedPlayer(tracks=config.player.tracks)
    mqtt = config.mqtt
    return Agent(
        device_id=config.device_id,
        signing_key=config.signing_key(),
        trusted_keys=config.trusted_keys(),
        endpoints=config.brokers,
        ssl_context=client_ssl_context(config.tls),
        state_dir=Path(config.state_dir),
        player=player,
        encryption_key=config.encryption_key(),
        management=_management(config, logger),
        display_name=config.display_name,
        options=AgentOptions(
            session_expiry_s=mqtt.session_expiry_s,
            keepalive_s=mqtt.keepalive_s,
            connect_timeout_s=mqtt.connect_timeout_s,
            backoff_initial_s=mqtt.backoff_initial_s,
            backoff_max_s=mqtt.backoff_max_s,
            failback_interval_s=mqtt.failback_interval_s,
            command_queue=mqtt.command_queue,
            liveness_interval_s=mqtt.liveness_interval_s,
            liveness_timeout_s=mqtt.liveness_timeout_s,
            max_inflight=mqtt.max_inflight,
            durable=config.state_fsync,
        ),
        logger=logger,
        telemetry=telemetry,
    )
