"""Token mode: revoking broker tokens over the ``amora_auth`` plugin's control topic.

A broker token stays valid until its ``exp``, and the plugin does not re-check a live
connection. So when a session ends early (logout, eviction, link or unlink, device revocation)
or expires (the sweep: its connection may still be up), every broker is told
``revokeSessions``: it refuses the username at CONNECT until ``until`` and kicks its live
connections, persisting its deny list before it answers. The database keeps each revocation
until ``until`` (`Store.end_sessions`); a full pass compares a broker's ``listRevocations``
with it and sends what the broker lacks (it was down, or restarted from an older file), then
``synced``: a plugin whose deny list file was missing (a new broker, a lost volume) refuses
every session login until then (fail closed). A full pass runs at start-up and as soon as the
plugin's admin connection to a broker drops (`amora_authz._fleet.BrokerFleet`).

The wire format (the plugin's README): ``{"commands": [{"command": "revokeSessions",
"sessions": [{"username", "until"}...]}, {"command": "listRevocations"}]}`` on
``$CONTROL/amora-auth/v1``, answers on ``.../response`` as dynamic security's, matched by
``correlationData`` (`amora_authz._control.DynsecClient` speaks both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from amora_authz._errors import BrokerError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from amora_authz._control import DynsecClient

__all__ = [
    "AUTH_CONTROL_TOPIC",
    "MAX_SESSIONS_PER_COMMAND",
    "NO_PLUGIN_HINT",
    "REVOCATION_MARGIN_S",
    "confirm_synced",
    "list_revocations",
    "missing_revocations",
    "parse_revocations",
    "revoke_commands",
    "send_revocations",
]

AUTH_CONTROL_TOPIC: Final = "$CONTROL/amora-auth/v1"
MAX_SESSIONS_PER_COMMAND: Final = 1000
"""The plugin's limit on sessions in one ``revokeSessions``."""
NO_PLUGIN_HINT: Final = (
    ": does the broker load the amora_auth plugin (infra/broker-plugin)? Token mode needs it on every broker, "
    'and the service\'s admin account needs publishClientSend on "$CONTROL/amora-auth/#"'
)
REVOCATION_MARGIN_S: Final = 60
"""Added to a token's expiry for its revocation: a broker whose clock runs up to this much
behind the service's still refuses the token (the plugin also tolerates ``iat`` 60 s ahead)."""


def revoke_commands(revoked: Mapping[str, int]) -> list[dict[str, Any]]:
    """``revokeSessions`` commands for ``revoked`` (username -> until, unix seconds), 1,000 sessions each."""
    entries = [{"username": name, "until": until} for name, until in sorted(revoked.items())]
    return [
        {"command": "revokeSessions", "sessions": entries[start : start + MAX_SESSIONS_PER_COMMAND]}
        for start in range(0, len(entries), MAX_SESSIONS_PER_COMMAND)
    ]


def parse_revocations(response: Mapping[str, Any], *, broker: str) -> dict[str, int]:
    """The deny list in a ``listRevocations`` answer (username -> until).

    Raises:
        BrokerError: the answer is not the documented shape (code ``bad_control_response``).
    """
    data = response.get("data", response)
    sessions = data.get("sessions") if isinstance(data, dict) else None
    if not isinstance(sessions, list):
        raise BrokerError(
            f"broker {broker} answered listRevocations without a sessions list: {str(response)[:200]}",
            broker=broker,
            code="bad_control_response",
        )
    held: dict[str, int] = {}
    for entry in sessions:
        name = entry.get("username") if isinstance(entry, dict) else None
        until = entry.get("until") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(until, int) or isinstance(until, bool):
            raise BrokerError(
                f"broker {broker} listed a malformed revocation: {str(entry)[:200]}",
                broker=broker,
                code="bad_control_response",
            )
        held[name] = max(until, held.get(name, until))
    return held


def missing_revocations(wanted: Mapping[str, int], held: Mapping[str, int]) -> dict[str, int]:
    """What a broker must be told: entries it lacks or holds with an earlier ``until``.

    Entries the broker holds beyond ``wanted`` stay: a revocation is never taken back (the
    protocol has no command for it, and a session id is never reused).
    """
    return {name: until for name, until in wanted.items() if held.get(name, 0) < until}


async def send_revocations(client: DynsecClient, revoked: Mapping[str, int]) -> int:
    """Tell one broker ``revoked``; return how many sessions it acknowledged.

    Raises:
        BrokerError: the broker is unreachable, did not answer, or refused a command.
    """
    if not revoked:
        return 0
    await client.execute_checked(revoke_commands(revoked))
    return len(revoked)


async def list_revocations(client: DynsecClient) -> dict[str, int]:
    """One broker's deny list (username -> until).

    Raises:
        BrokerError: the broker is unreachable, did not answer, refused, or answered badly.
    """
    (response,) = await client.execute_checked([{"command": "listRevocations"}])
    return parse_revocations(response, broker=client.endpoint.name)


async def confirm_synced(client: DynsecClient) -> bool:
    """Tell one broker its deny list holds every revocation in force (after a full pass).

    Returns:
        False when the plugin predates the command (it answers "Unknown command"; such a
        plugin never refuses logins for a missing deny list), else True.

    Raises:
        BrokerError: the broker is unreachable, did not answer, or refused otherwise.
    """
    (response,) = await client.execute([{"command": "synced"}])
    error = response.get("error")
    if error is None:
        return True
    if str(error).startswith("Unknown command"):
        return False
    raise BrokerError(
        f"broker {client.endpoint.name} refused synced: {str(error)[:200]}",
        broker=client.endpoint.name,
        code="control_command_failed",
    )
