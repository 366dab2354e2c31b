"""The ``amora-agent`` process: Last Will on a kill, offline status on SIGTERM, versions across restarts."""

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from amora_protocol import (
    Codec,
    CommandStatus,
    ConnectionStatus,
    DeviceState,
    Ping,
    commands_topic,
    connection_topic,
    responses_topic,
    state_topic,
)

pytestmark = pytest.mark.services

DEVICE = "player-1"


def write_config(tmp_path, device, broker, *, name: str = "agent") -> str:
    signing = tmp_path / f"{device.device_id}-signing.pem"
    signing.write_bytes(device.signing_key.to_pem())
    signing.chmod(0o600)
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f"""
device_id = "{device.device_id}"
state_dir = "{device.state_dir}"
display_name = "Test player"

[keys]
signing_key_file = "{signing}"
trusted_authz_keys = ["{base64.b64encode(device.authz_key.public_key.raw).decode()}"]

[tls]
ca_file = "{device.pki.ca_file}"
cert_file = "{device.cert.cert_file}"
key_file = "{device.cert.key_file}"

[[brokers]]
host = "{broker.host}"
port = {broker.device_port}

[mqtt]
backoff_initial_s = 0.05

[player]
kind = "simulated"
"""
    )
    return str(config)


class AgentProcess:
    def __init__(self, config: str, log_path, *, args: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "amora_agent", "run", "--config", config, *args],
            stdout=self._log,
            stderr=self._log,
        )

    def wait(self, timeout: float = 15) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()


async def wait_connection(client, key, *, online: bool, start: int):
    def check(received) -> bool:
        return received.topic == connection_topic(DEVICE) and received.message(key).online is online

    return (await client.wait_for(check, start=start)).message(key)


async def test_kill_publishes_the_will_and_sigterm_the_offline_status(tmp_path, broker, live_device, live_app) -> None:
    device = live_device(broker)
    key = device.signing_key.public_key
    config = write_config(tmp_path, device, broker)
    app, client = live_app(broker, (DEVICE,))
    async with client:
        await client.subscribe(state_topic(DEVICE), connection_topic(DEVICE))
        process = AgentProcess(config, tmp_path / "agent.log")
        try:
            status = await wait_connection(client, key, online=True, start=0)
            assert isinstance(status, ConnectionStatus)
            first_run = await client.wait_for(lambda r: r.topic == state_topic(DEVICE))
            first_version = first_run.message(key).version
            mark = len(client.messages)
            process.kill()
            will = await wait_connection(client, key, online=False, start=mark)
            assert will.reason == "connection lost"
        finally:
            process.kill()

        # A command sent while the agent is down waits in its persistent session.
        await client.subscribe(responses_topic(DEVICE))
        queued, payload = app.command(DEVICE, Ping())
        client.publish(
            commands_topic(DEVICE),
            payload,
            qos=1,
            content_type=Codec.MSGPACK.value,
            correlation_data=queued.id.encode(),
            message_expiry_interval=60,
        )

        # Restarted: online again, and its states are newer than every earlier one.
        mark = len(client.messages)
        process = AgentProcess(config, tmp_path / "agent.log")
        try:
            await wait_connection(client, key, online=True, start=mark)
            second = await client.wait_for(lambda r: r.topic == state_topic(DEVICE), start=mark)
            state = second.message(key)
            assert isinstance(state, DeviceState)
            assert state.version > first_version
            answer = await client.wait_for(
                lambda r: r.topic == responses_topic(DEVICE) and r.message(key).command_id == queued.id
            )
            assert answer.message(key).status is CommandStatus.SUCCEEDED
            mark = len(client.messages)
            process.proc.send_signal(signal.SIGTERM)
            offline = await wait_connection(client, key, online=False, start=mark)
            assert offline.reason == "shutdown"
            assert await asyncio.to_thread(process.wait) == 0
        finally:
            process.kill()
    # The logs are JSON lines.
    lines = [json.loads(line) for line in (tmp_path / "agent.log").read_text().splitlines() if line.startswith("{")]
    assert any(entry.get("event") == "online" for entry in lines)


def test_bad_config_exits_with_status_2(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('device_id = "x"\n')
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "amora_agent", "check-config", "--config", str(bad)],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 2
    assert b"amora-agent:" in result.stderr


async def test_several_agents_run_in_one_process(tmp_path, broker, live_device, live_app) -> None:
    devices = [live_device(broker, device_id=f"sim-{i}") for i in range(3)]
    configs = [write_config(tmp_path, d, broker, name=d.device_id) for d in devices]
    ids = tuple(d.device_id for d in devices)
    _, client = live_app(broker, ids)
    async with client:
        await client.subscribe(*(connection_topic(i) for i in ids))
        extra = tuple(a for c in configs[1:] for a in ("--config", c))
        process = AgentProcess(configs[0], tmp_path / "fleet.log", args=extra)
        try:
            for device in devices:
                topic = connection_topic(device.device_id)
                key = device.signing_key.public_key
                await client.wait_for(lambda r, t=topic, k=key: r.topic == t and r.message(k).online)
            mark = len(client.messages)
            process.proc.send_signal(signal.SIGTERM)
            for device in devices:
                topic = connection_topic(device.device_id)
                key = device.signing_key.public_key
                await client.wait_for(
                    lambda r, t=topic, k=key: r.topic == t and not r.message(k).online,
                    start=mark,
                )
            assert await asyncio.to_thread(process.wait) == 0
        finally:
            process.kill()


def test_under_systemd_it_notifies_readiness_watchdog_and_stopping(tmp_path, broker, live_device) -> None:
    device = live_device(broker)
    config = write_config(tmp_path, device, broker)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify.sock"))
        listener.settimeout(15)  # bounds every wait below
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"}
        with (tmp_path / "agent.log").open("wb") as log:
            process = subprocess.Popen(  # noqa: S603 - fixed argv
                [sys.executable, "-m", "amora_agent", "run", "--config", config], env=env, stdout=log, stderr=log
            )
            try:
                ready = listener.recv(4096).decode()
                assert ready.splitlines()[0] == "READY=1", ready
                # Pets every 0.1 s from the event loop, while it runs.
                assert [listener.recv(4096).decode() for _ in range(3)] == ["WATCHDOG=1"] * 3
                process.send_signal(signal.SIGTERM)
                while (message := listener.recv(4096).decode()) == "WATCHDOG=1":
                    pass
                assert message == "STOPPING=1"
                assert process.wait(timeout=15) == 0
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
