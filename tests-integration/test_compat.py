"""Version skew: the latest release of each distribution against the current code.

Each previous release is rebuilt from the commit ``releases.toml`` records (``git worktree``
+ ``hatch build``) into its own venv (cached under ``.compat-cache/``), then run against the
current code on the real local stack (brokers with TLS and dynamic security, the authz
service, an MPD):

- the previous protocol package verifies the current vectors, and the current package the
  previous vectors;
- the current SDK drives a player run by the previous agent (on a real MPD);
- the previous SDK logs in at the current authz service and drives a player run by the
  current agent, which verifies its plain and sealed commands;
- a player upgraded in place (previous agent stopped, current agent started on the same state
  directory) keeps counting its state versions up, so apps keep accepting its states.

``test_compat_breaks.py`` shows that this suite fails on a breaking change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from amora_devtools.compat import VECTORS_PATH, PreviousEnv, check_vectors, previous_env, probe
from amora_devtools.stack import Stack
from amora_sync import ConnectionStatus, DeviceState, SetVolume

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_TIMEOUT_S = 120.0

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture(scope="session")
def previous_protocol() -> PreviousEnv:
    return previous_env(ROOT, "amora-protocol")


@pytest.fixture(scope="session")
def previous_sdk() -> PreviousEnv:
    return previous_env(ROOT, "amora-sync-sdk")


@pytest.fixture(scope="session")
def previous_agent() -> PreviousEnv:
    return previous_env(ROOT, "amora-device-agent")


@pytest.fixture(scope="module")
def skew_stack(tmp_path_factory: pytest.TempPathFactory, previous_agent: PreviousEnv) -> Iterator[Stack]:
    """player-1 (real MPD) runs the previous agent, player-2 (simulated) the current one."""
    with Stack(
        tmp_path_factory.mktemp("compat") / "stack",
        players=2,
        standby=False,
        users={"alice": (0, 1)},
        agent_programs={"player-1": previous_agent.script("amora-agent")},
    ) as running:
        yield running


def _scenario_args(stack: Stack, device: str, volume: int) -> list[str]:
    assert stack.pki is not None
    return [
        "--authz-url",
        stack.authz_url,
        "--ca-file",
        str(stack.pki.ca_file),
        "--user",
        "alice",
        "--device",
        device,
        "--volume",
        str(volume),
    ]


def _report(stdout: str, stderr: str) -> dict[str, Any]:
    lines = stdout.strip().splitlines()
    assert lines, f"the scenario printed no report:\n{stderr[-3000:]}"
    return dict(json.loads(lines[-1]))


def _assert_scenario_passed(report: dict[str, Any], volume: int) -> None:
    assert report["error"] is None, report
    assert report["steps"] == [
        "session",
        "retained state and online",
        "play",
        "set_volume",
        "sealed set_volume",
        "pause",
    ]
    assert report["final"]["volume"] == volume + 1
    assert report["final"]["status"] == "pause"
    assert report["invalid"] == 0


def test_previous_vectors_verify_with_current_package_and_back(previous_protocol: PreviousEnv):
    current = {v["name"]: v for v in json.loads((ROOT / VECTORS_PATH).read_text())}
    unknown_keys = ["header-unknown-key", "body-unknown-key", "json-outer-unknown-key"]
    unknown_keys += ["command-unknown-keys", "response-unknown-key"]
    assert all(current[name]["expect"] == "valid" for name in unknown_keys)  # the previous package must accept them
    report = check_vectors(ROOT, previous_protocol)
    assert report.failures == []
    assert report.old_vectors_new_package["checked"] >= 29
    assert report.new_vectors_old_package["version"] == previous_protocol.release.version
    assert report.new_vectors_old_package["checked"] >= 20  # every valid vector, unknown keys included


def test_current_sdk_drives_previous_agent(skew_stack: Stack, previous_agent: PreviousEnv):
    agent = skew_stack.player("player-1").process
    assert agent is not None
    cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes().split(b"\0")
    # A console script: the venv's interpreter runs the venv's amora-agent.
    assert bytes(previous_agent.script("amora-agent")) in cmdline, "player-1 must run the previous agent"
    done = subprocess.run(  # noqa: S603 - fixed argv: this interpreter and the probe
        [sys.executable, str(probe("sdk_scenario.py")), *_scenario_args(skew_stack, "player-1", 37)],
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT_S,
        check=False,
    )
    report = _report(done.stdout, done.stderr)
    _assert_scenario_passed(report, 37)


def test_previous_sdk_drives_current_agent(skew_stack: Stack, previous_sdk: PreviousEnv):
    done = previous_sdk.run(
        probe("sdk_scenario.py"), *_scenario_args(skew_stack, "player-2", 52), timeout=SCENARIO_TIMEOUT_S
    )
    report = _report(done.stdout, done.stderr)
    assert report["sdk"] == previous_sdk.release.version
    assert Path(report["module"]).is_relative_to(previous_sdk.directory), "the previous SDK must be the one running"
    _assert_scenario_passed(report, 52)


@contextlib.asynccontextmanager
async def _upgraded_player(tmp_path: Path, previous_agent: PreviousEnv, sdk_client: Any) -> AsyncIterator[Any]:
    """player-1 on the previous agent, driven once, then upgraded in place to the current agent.

    Yields ``(client, seen, until, version_before_upgrade)`` with the current agent online.
    """
    with Stack(
        tmp_path / "stack",
        players=1,
        standby=False,
        users={"alice": (0,)},
        agent_programs={"player-1": previous_agent.script("amora-agent")},
        supervise=False,  # the test stops and replaces the agent itself
    ) as stack:
        player = stack.player("player-1")
        async with sdk_client(stack, "alice") as client, client.watch("player-1") as events:
            seen: dict[str, Any] = {}

            async def until(predicate: Any) -> None:
                async with asyncio.timeout(30):
                    while not predicate():
                        event = await anext(events)
                        if isinstance(event, DeviceState):
                            seen["state"] = event
                        elif isinstance(event, ConnectionStatus):
                            seen["online"] = event.online

            await until(lambda: "state" in seen and seen.get("online") is True)
            await client.command("player-1", SetVolume(volume=21), timeout=15)
            await until(lambda: seen["state"].volume == 21)
            before = seen["state"].version
            # The upgrade: the previous agent stops (offline status), the current one starts on
            # the same configuration and state directory.
            assert player.process is not None
            player.process.stop()
            await until(lambda: seen.get("online") is False)
            stack.agent_programs.pop("player-1")
            stack.start_agent(player)
            await until(lambda: seen.get("online") is True)
            yield client, seen, until, before


async def test_agent_upgraded_in_place_keeps_counting_versions(
    tmp_path: Path, previous_agent: PreviousEnv, sdk_client: Any
):
    async with _upgraded_player(tmp_path, previous_agent, sdk_client) as (client, seen, until, before):
        # The current agent publishes a fresh state on connecting; a version at or below the
        # previous agent's last one would be dropped by every app as old news.
        await until(lambda: seen["state"].version > before)
        assert seen["state"].volume == 21  # the real MPD kept it
        assert client.stats.invalid == 0


async def test_agent_upgraded_in_place_takes_commands_at_once(
    tmp_path: Path, previous_agent: PreviousEnv, sdk_client: Any
):
    async with _upgraded_player(tmp_path, previous_agent, sdk_client) as (client, seen, until, _before):
        await client.command("player-1", SetVolume(volume=22), timeout=15)
        await until(lambda: seen["state"].volume == 22)
