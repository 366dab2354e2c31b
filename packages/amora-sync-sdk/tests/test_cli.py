"""The `amora` command, run as a real process against the local stack."""

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from amora_protocol import ChangeVolume, Next, PlaybackStatus, PlayQueueItem, Seek, SetVolume, Song
from amora_sync import CommandStatus, DeviceState, Pause, Ping, RejectReason
from amora_sync._cli import UsageError, parse_action, render_table, state_row

WAIT = 30.0


@pytest.mark.parametrize(
    ("argv", "action"),
    [
        (["pause"], Pause()),
        (["next"], Next()),
        (["ping"], Ping()),
        (["seek", "1:30"], Seek(position_ms=90_000)),
        (["seek", "1500ms"], Seek(position_ms=1500)),
        (["seek", "12"], Seek(position_ms=12_000)),
        (["volume", "40"], SetVolume(volume=40)),
        (["volume", "+5"], ChangeVolume(delta=5)),
        (["volume", "-5"], ChangeVolume(delta=-5)),
        (["play-item", "3"], PlayQueueItem(position=3)),
    ],
)
def test_parse_action(argv, action):
    assert parse_action(argv[0], argv[1:]) == action


@pytest.mark.parametrize("argv", [["dance"], ["pause", "now"], ["volume", "loud"], ["volume", "400"], ["seek"]])
def test_parse_action_rejects_nonsense(argv):
    with pytest.raises(UsageError):
        parse_action(argv[0], argv[1:])


def test_table_rows_interpolate_the_position():
    state = DeviceState(
        device_id="player-1",
        version=7,
        status=PlaybackStatus.PLAY,
        sampled_at_ms=1_000_000,
        elapsed_ms=60_000,
        song=Song(file="x.flac", title="Blue", artist="Miles", duration_ms=300_000),
        volume=35,
    )
    row = state_row("player-1", state, None, at_ms=1_005_000)
    assert row == ["player-1", "unknown", "play", "Blue - Miles", "1:05/5:00", "35", "7"]
    lines = render_table([row, state_row("player-2", None, None, at_ms=0)], width=200)
    assert lines[0].startswith("DEVICE")
    assert len(lines) == 3


def test_a_narrow_terminal_shrinks_the_song_never_the_version():
    state = DeviceState(
        device_id="player-1",
        version=1234567,
        status=PlaybackStatus.PLAY,
        sampled_at_ms=0,
        song=Song(file="x.flac", title="A very long title " * 4, artist="Someone"),
    )
    row = state_row("player-1", state, None, at_ms=0)
    lines = render_table([row], width=70)
    assert all(len(line) <= 70 for line in lines)
    assert lines[0].endswith("VERSION")
    assert lines[1].endswith("1234567")
    assert "…" in lines[1]


@pytest.mark.parametrize(
    ("script", "dist"),
    [("amora", "amora-sync-sdk"), ("amora-agent", "amora-device-agent"), ("amora-authz", "amora-authz-service")],
)
def test_every_cli_prints_its_version(script, dist):
    # The installed console scripts, as a user runs them.
    done = subprocess.run(  # noqa: S603 - our own console scripts
        [Path(sys.executable).parent / script, "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(metadata.version(dist))


async def amora(stack, *argv: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "AMORA_AUTHZ_URL": stack.authz.url,
        "AMORA_TOKEN": stack.token,
        "AMORA_CA_FILE": str(stack.pki.ca_file),
        "AMORA_CONFIG": "/nonexistent",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "amora_sync._cli",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WAIT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.services
async def test_send_prints_the_response_and_exits_zero(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    code, out, err = await amora(stack, "send", "player-1", "volume", "+3")
    assert code == 0, err
    response = json.loads(out)
    assert response["status"] == "succeeded"
    assert device.commands[0].action == ChangeVolume(delta=3)


@pytest.mark.services
async def test_send_exits_nonzero_with_the_reason_on_rejection(stack):
    device = stack.devices["player-1"]
    device.answer = CommandStatus.REJECTED
    device.reject_reason = RejectReason.UNSUPPORTED
    await device.connect(stack.broker)
    code, out, err = await amora(stack, "send", "player-1", "pause")
    assert code == 1
    assert "unsupported" in err
    assert json.loads(out)["status"] == "rejected"


@pytest.mark.services
async def test_send_times_out_when_nobody_answers(stack):
    device = stack.devices["player-1"]
    device.answer = None
    await device.connect(stack.broker)
    code, _, err = await amora(stack, "send", "player-1", "play", "--timeout", "1")
    assert code == 1
    assert "no final response" in err


@pytest.mark.services
async def test_ping_reports_percentiles(stack):
    await stack.devices["player-1"].connect(stack.broker)
    code, out, err = await amora(stack, "ping", "player-1", "-n", "5", "-q")
    assert code == 0, err
    assert "5 replies, 0 lost" in out
    assert "p99" in out


@pytest.mark.services
async def test_devices_and_watch_list_the_users_players(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    state = device.publish_state()
    code, out, err = await amora(stack, "devices", "--json")
    assert code == 0, err
    listed = {row["device_id"]: row for row in map(json.loads, out.splitlines())}
    assert set(listed) == {"player-1", "player-2"}
    assert listed["player-1"]["online"] is True
    assert listed["player-1"]["state"]["version"] == state.version
    code, out, err = await amora(stack, "watch", "player-1", "--count", "2")
    assert code == 0, err
    kinds = sorted(json.loads(line)["kind"] for line in out.splitlines())
    assert kinds == ["connection", "state"]


@pytest.mark.services
async def test_unknown_device_is_a_usage_error(stack):
    code, _, err = await amora(stack, "send", "player-9", "pause")
    assert code == 2
    assert "player-9" in err


@pytest.mark.services
async def test_watch_on_a_terminal_draws_a_live_table(stack):
    device = stack.devices["player-1"]
    await device.connect(stack.broker)
    device.publish_state(song=Song(file="t.flac", title="Tick", artist="Tock", duration_ms=600_000))
    master, slave = pty.openpty()
    env = {
        **os.environ,
        "AMORA_AUTHZ_URL": stack.authz.url,
        "AMORA_TOKEN": stack.token,
        "AMORA_CA_FILE": str(stack.pki.ca_file),
        "AMORA_CONFIG": "/nonexistent",
        "COLUMNS": "120",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "amora_sync._cli", "watch", "--tick", "0.1", env=env, stdout=slave, stderr=slave
    )
    os.close(slave)
    screen = b""

    def read_until_redrawn() -> bytes:
        # The table is drawn, then redrawn in place (cursor up) as the position ticks.
        data = b""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                data += os.read(master, 65536)
                if b"Tick - Tock" in data and data.count(b"\x1b[2K") > 8 and b"F" in data:
                    return data
        return data

    try:
        screen = await asyncio.to_thread(read_until_redrawn)
    finally:
        proc.terminate()
        await proc.wait()
        os.close(master)
    text = screen.decode(errors="replace")
    assert "DEVICE" in text
    assert "Tick - Tock" in text
    assert "player-2" in text
    assert "\x1b[" in text  # redrawn in place, not scrolled
