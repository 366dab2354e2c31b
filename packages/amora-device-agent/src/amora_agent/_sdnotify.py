"""systemd's notification protocol (sd_notify(3)): readiness, the watchdog, stopping.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named in
``$NOTIFY_SOCKET`` (a leading ``@`` means Linux's abstract namespace), so a small socket
write does it; no library. Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=`` is
not ``notify``) every call does nothing.

The watchdog is petted from the agent's own event loop (`SystemdNotifier.pet_watchdog`):
if the loop blocks, the pets stop and systemd restarts the agent after ``WatchdogSec=``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    import structlog

__all__ = ["SystemdNotifier"]


class SystemdNotifier:
    """Send notifications to systemd when it asked for them (``Type=notify``).

    Args:
        environ: Where to read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.
        logger: Told (as a warning) when a notification cannot be sent.
    """

    def __init__(
        self, environ: Mapping[str, str] | None = None, *, logger: structlog.typing.FilteringBoundLogger | None = None
    ) -> None:
        """Read systemd's variables."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._log = logger
        self.watchdog_interval_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if self._address and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # Half the timeout, as sd_watchdog_enabled(3) recommends.
            self.watchdog_interval_s = int(usec) / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        """Whether systemd listens (``$NOTIFY_SOCKET`` is set)."""
        return bool(self._address)

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``READY=1``, ``STATUS=...``) in one datagram; False if not sent."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if self._log is not None:
                self._log.warning("systemd notification not sent", error=str(exc), fields=list(fields))
            return False
        return True

    async def pet_watchdog(self) -> None:
        """Send ``WATCHDOG=1`` every half ``WatchdogSec=`` until cancelled (returns at once if unset)."""
        if self.watchdog_interval_s is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval_s)
