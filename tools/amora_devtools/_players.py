"""The stack's players: what each one is, its agent's configuration, and how to tell it is up."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from amora_devtools._toml import toml_value
from amora_protocol import ConnectionStatus, ProtocolError, parse_envelope

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from amora_devtools._proc import ManagedProcess
    from amora_devtools.broker import BrokerProcess
    from amora_devtools.mpd import MpdProcess
    from amora_protocol import EncryptionKey, SigningKey

__all__ = ["Player", "agent_alive", "agent_config", "agent_config_error", "says_online"]

# amora-agent exits with status 2 on a configuration error; its systemd unit does not
# restart it then (RestartPreventExitStatus=2), nor does the stack.
_CONFIG_ERROR_STATUS = 2


@dataclass
class Player:
    """One player of the stack and its agent process."""

    device_id: str
    kind: str  # "mpd" or "simulated"
    directory: Path
    config_file: Path
    signing_key: SigningKey
    encryption_key: EncryptionKey
    process: ManagedProcess | None = None
    # Extra environment for the agent process (e.g. libfaketime to shift its clock).
    env: dict[str, str] | None = None

    @property
    def log_file(self) -> Path:
        """The agent's log."""
        return self.directory / "agent.log"


def agent_config(
    player: Player,
    *,
    ca_file: Path,
    brokers: Sequence[BrokerProcess],
    mpd: MpdProcess | None,
    authz_keys: Sequence[str],
) -> str:
    """The agent's TOML configuration for ``player`` (fast reconnects and failback for development)."""
    lines = [
        f"device_id = {toml_value(player.device_id)}",
        f"state_dir = {toml_value(str(player.directory / 'state'))}",
        f"display_name = {toml_value(player.device_id.replace('-', ' ').title())}",
        "state_fsync = false",
        "",
        "[keys]",
        f"signing_key_file = {toml_value(str(player.directory / 'signing.pem'))}",
        f"encryption_key_file = {toml_value(str(player.directory / 'encryption.pem'))}",
        f"trusted_authz_keys = {json.dumps(list(authz_keys))}",
        "",
        "[tls]",
        f"ca_file = {toml_value(str(ca_file))}",
        f"cert_file = {toml_value(str(player.directory / 'device.pem'))}",
        f"key_file = {toml_value(str(player.directory / 'device.key'))}",
        "",
        "[mqtt]",
        "keepalive_s = 10",
        "backoff_initial_s = 0.2",
        "backoff_max_s = 5.0",
        "failback_interval_s = 5.0",
    ]
    for broker in brokers:
        lines += ["", "[[brokers]]", f"host = {toml_value(broker.host)}", f"port = {broker.device_port}"]
    lines += ["", "[player]", f'kind = "{player.kind}"']
    if player.kind == "mpd":
        if mpd is None:
            msg = f"{player.device_id} is an MPD player but no MPD runs"
            raise ValueError(msg)
        lines += [f"host = {toml_value(mpd.host)}", f"port = {mpd.port}"]
    return "\n".join(lines) + "\n"


def agent_alive(player: Player) -> Callable[[], bool]:
    """Whether the player's agent process runs (for the supervisor)."""
    return lambda: player.process is not None and player.process.alive()


def agent_config_error(player: Player) -> Callable[[], bool]:
    """Whether the agent exited on a configuration error: not restarted (for the supervisor)."""
    return lambda: player.process is not None and player.process.returncode == _CONFIG_ERROR_STATUS


def says_online(payload: bytes, content_type: str | None) -> bool:
    """Whether a retained connection status says online.

    The payload is a signed envelope; the agents' own tests verify it. Here only liveness
    matters, and an offline Last Will must not count: decode the body.
    """
    try:
        env = parse_envelope(payload, content_type=content_type)
    except ProtocolError:
        return False
    try:
        if env.header.sealed_to is not None:
            return False
        decoder = msgspec.json if content_type and content_type.endswith("+json") else msgspec.msgpack
        return bool(decoder.decode(env.body, type=ConnectionStatus).online)
    except msgspec.DecodeError:
        return False
