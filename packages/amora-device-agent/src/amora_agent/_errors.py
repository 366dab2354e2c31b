"""The agent's error hierarchy: one root, subclasses carrying what a caller can act on."""

from __future__ import annotations

__all__ = [
    "AgentError",
    "ConfigError",
    "ManagementError",
    "PlayerError",
    "PlayerUnavailable",
    "StateDirError",
]


class AgentError(Exception):
    """Root of every error raised by `amora_agent`."""


class ConfigError(AgentError):
    """A configuration file or value that cannot be used.

    Attributes:
        key: The offending key (dotted path), or ``None`` for the whole file.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        """Build the error for ``key``."""
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class StateDirError(AgentError):
    """The state directory cannot be read or written (versions, executed command ids).

    Attributes:
        path: The file that failed.
    """

    def __init__(self, message: str, *, path: str) -> None:
        """Build the error for ``path``."""
        self.path = path
        super().__init__(f"{path}: {message}")


class PlayerError(AgentError):
    """The player refused or failed a command (e.g. a seek past the end).

    Attributes:
        action: The action that failed (its wire tag), if known.
    """

    def __init__(self, message: str, *, action: str | None = None) -> None:
        """Build the error."""
        self.action = action
        super().__init__(message)


class PlayerUnavailable(PlayerError):  # noqa: N818 - says what the caller sees
    """The player (MPD) cannot be reached; the agent reconnects by itself."""


class ManagementError(AgentError):
    """The management plane (IoT Hub) failed; never fatal for real-time work."""
