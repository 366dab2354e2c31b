"""Drive one player through whichever ``amora_sync`` this interpreter imports.

Standalone on purpose (imports only the SDK, the protocol and httpx): the compatibility
suite runs it with the current SDK against a previous agent, and inside a previous SDK's
venv against the current agent and authz service.

    python sdk_scenario.py --authz-url URL --ca-file CA --user alice --device player-2 --volume 41

It logs in through the development issuer, waits for the device's retained state and
online status, then plays, sets the volume (plain, then sealed to the device's key),
pauses, and waits after each command for a verified response and a verified state that
shows the change. Prints one JSON object (``steps`` done, ``final`` state fields,
``invalid`` count, ``error``); exits 1 when any step failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

import httpx

import amora_sync as sdk
from amora_protocol import PlaybackStatus

if TYPE_CHECKING:
    from collections.abc import Callable

WAIT_S = 15.0


async def run(args: argparse.Namespace, steps: list[str], final: dict[str, Any]) -> int:
    """The scenario; appends each completed step to ``steps``; returns the invalid count."""

    async def token() -> str:
        async with httpx.AsyncClient(base_url=args.authz_url, timeout=10) as http:
            response = await http.post("/dev-issuer/token", json={"username": args.user})
            response.raise_for_status()
            return str(response.json()["access_token"])

    policy = sdk.ReconnectPolicy(initial_delay=0.05, max_delay=1.0, connect_timeout=3.0)
    async with sdk.AmoraClient(args.authz_url, token, ca_file=args.ca_file, reconnect=policy) as client:
        steps.append("session")
        device = args.device
        seen: dict[str, Any] = {}
        async with client.watch(device) as events:

            async def until(what: str, predicate: Callable[[], bool]) -> None:
                async with asyncio.timeout(WAIT_S):
                    while not predicate():
                        event = await anext(events)
                        if isinstance(event, sdk.DeviceState):
                            seen["state"] = event
                        elif isinstance(event, sdk.ConnectionStatus):
                            seen["online"] = event.online
                steps.append(what)

            await until("retained state and online", lambda: "state" in seen and seen.get("online") is True)
            before = seen["state"].version
            await client.command(device, sdk.Play(), timeout=WAIT_S)
            await until("play", lambda: seen["state"].version > before and seen["state"].status is PlaybackStatus.PLAY)
            await client.command(device, sdk.SetVolume(volume=args.volume), timeout=WAIT_S)
            await until("set_volume", lambda: seen["state"].volume == args.volume)
            await client.command(device, sdk.SetVolume(volume=args.volume + 1), timeout=WAIT_S, seal=True)
            await until("sealed set_volume", lambda: seen["state"].volume == args.volume + 1)
            await client.command(device, sdk.Pause(), timeout=WAIT_S)
            await until("pause", lambda: seen["state"].status is PlaybackStatus.PAUSE)
            state = seen["state"]
            final.update(version=state.version, volume=state.volume, status=str(state.status.value))
        return int(client.stats.invalid)


def main() -> int:
    """Run the scenario; print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authz-url", required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--volume", type=int, default=41)
    args = parser.parse_args()
    steps: list[str] = []
    final: dict[str, Any] = {}
    report: dict[str, Any] = {
        "sdk": sdk.__version__,
        "module": sdk.__file__,
        "steps": steps,
        "final": final,
        "error": None,
    }
    try:
        report["invalid"] = asyncio.run(run(args, steps, final))
    except Exception as exc:  # noqa: BLE001 - the report names whatever broke
        report["error"] = f"{type(exc).__name__}: {exc}"
    sys.stdout.write(json.dumps(report) + "\n")
    return 0 if report["error"] is None and report.get("invalid") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
