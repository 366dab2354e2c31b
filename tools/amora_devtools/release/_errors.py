"""The release tool's exception."""

from __future__ import annotations

from amora_devtools._errors import DevtoolsError

__all__ = ["ReleaseError"]


class ReleaseError(DevtoolsError):
    """A release was refused or failed; the message says why and what to do.

    Attributes:
        problems: Each problem found (artefact checks list several at once).
    """

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        """Build the error; ``problems`` are listed under the message."""
        self.problems = problems
        text = message + "".join(f"\n  - {p}" for p in problems)
        super().__init__(text)
