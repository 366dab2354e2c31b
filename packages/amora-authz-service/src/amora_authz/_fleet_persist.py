"""Whether each broker persists what it is told: its dynsec file checked after each pass.

A mixin of `amora_authz._fleet.BrokerFleet` (it sets the fleet's status). mosquitto answers
success even when it cannot write its dynamic-security file (docs/decisions/0004), so the
answer alone proves nothing: a broker restart would lose the change. Where the file is readable
from here, a change must have rewritten it and a full pass must find exactly the desired
clients in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from amora_authz._dynsec import MANAGED

if TYPE_CHECKING:
    import structlog

    from amora_authz._dynsec import BrokerEndpoint, DynsecState
    from amora_authz._fleet import BrokerStatus

__all__ = ["PersistenceCheck"]


class PersistenceCheck:
    """The dynsec file checks; the state they read is set up by `BrokerFleet.__init__`."""

    status: dict[str, BrokerStatus]
    _log: structlog.typing.FilteringBoundLogger

    @staticmethod
    def _mtime(endpoint: BrokerEndpoint) -> int | None:
        if endpoint.dynsec_file is None:
            return None
        try:
            return Path(endpoint.dynsec_file).stat().st_mtime_ns
        except OSError:
            return None

    def _check_modified(self, endpoint: BrokerEndpoint, before: int | None) -> None:
        """After a change: the broker must have rewritten its dynsec file (cheap check)."""
        after = self._mtime(endpoint)
        if before is None or after is None:
            return
        self._set_persisting(endpoint, persisting=after != before, missing=[], stale=[])

    def _check_persisted(self, endpoint: BrokerEndpoint, desired: DynsecState) -> None:
        """After a full pass: the broker's dynsec file must hold exactly the desired clients.

        mosquitto answers success even when it cannot write its file (docs/decisions/0004), so
        the answer alone proves nothing: a broker restart would lose the change.
        """
        if endpoint.dynsec_file is None:
            return
        status = self.status[endpoint.name]
        try:
            document = json.loads(Path(endpoint.dynsec_file).read_bytes())
            on_disk = {
                c["username"]
                for c in document.get("clients", ())
                if c.get("textname") == MANAGED or c["username"] in desired.clients
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            status.persisting = None
            self._log.warning("broker.persistence_unknown", broker=endpoint.name, error=str(exc))
            return
        wanted = set(desired.clients)
        self._set_persisting(
            endpoint,
            persisting=on_disk == wanted,
            missing=sorted(wanted - on_disk)[:10],
            stale=sorted(on_disk - wanted)[:10],
        )

    def _set_persisting(
        self, endpoint: BrokerEndpoint, *, persisting: bool, missing: list[str], stale: list[str]
    ) -> None:
        if not persisting:
            self._log.error(
                "broker.not_persisting",
                broker=endpoint.name,
                dynsec_file=endpoint.dynsec_file,
                missing=missing,
                stale=stale,
            )
        self.status[endpoint.name].persisting = persisting
