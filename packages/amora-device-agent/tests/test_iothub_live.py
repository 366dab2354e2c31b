"""IoT Hub management with the real azure-iot-device client against a local IoT Hub stand-in.

The stand-in is a mosquitto with TLS on 127.0.0.1:8883 (the library's fixed port) plus a
twin responder that speaks IoT Hub's MQTT topics: twin GET, reported-properties PATCH,
desired-properties patches and device-to-cloud telemetry.
"""

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from amora_agent import IoTHubPlane, SimulatedPlayer
from amora_agent._mqtt import NO_RECONNECT
from amora_protocol import (
    Codec,
    CommandStatus,
    Ping,
    SigningKey,
    commands_topic,
    responses_topic,
    unauthenticated_id,
)

pytestmark = [
    pytest.mark.services,
    # azure-iot-device (paho 1.6) builds its TLS context with ssl.PROTOCOL_TLSv1_2 (deprecated).
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning"),
]

DEVICE = "player-1"
HUB_PORT = 8883  # hard-coded in azure-iot-device


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class TwinResponder:
    """Answers IoT Hub's twin topics the way the hub does, and records what devices send."""

    def __init__(self, desired: dict[str, Any]) -> None:
        self.desired = {**desired, "$version": 1}
        self.reported: dict[str, Any] = {"$version": 1}
        self.telemetry: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: Any = None

    async def start(self, ssl_context) -> None:
        import gmqtt  # noqa: PLC0415
        from gmqtt.mqtt.constants import MQTTv311  # noqa: PLC0415

        client = gmqtt.Client("iothub-twin-responder")
        client.set_config({"reconnect_retries": NO_RECONNECT})
        client.on_message = self._on_message
        await asyncio.wait_for(client.connect("127.0.0.1", HUB_PORT, ssl=ssl_context, version=MQTTv311), 10)
        subscribed = asyncio.Event()
        client.on_subscribe = lambda *_a: subscribed.set()
        client.subscribe(
            [
                gmqtt.Subscription("$iothub/twin/GET/#", qos=1),
                gmqtt.Subscription("$iothub/twin/PATCH/properties/reported/#", qos=1),
                gmqtt.Subscription("devices/+/messages/events/#", qos=1),
            ]
        )
        await asyncio.wait_for(subscribed.wait(), 10)
        self._client = client

    async def stop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError):  # see AppClient.__aexit__
                await self._client.disconnect()

    def _on_message(self, client, topic, payload, qos, props) -> int:  # noqa: ARG002
        rid = parse_qs(topic.partition("?")[2]).get("$rid", [""])[0]
        if topic.startswith("$iothub/twin/GET/"):
            twin = {"desired": self.desired, "reported": self.reported}
            client.publish(f"$iothub/twin/res/200/?$rid={rid}", json.dumps(twin), qos=0)
        elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            self.reported.update(json.loads(payload))
            self.reported["$version"] += 1
            version = self.reported["$version"]
            client.publish(f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b"", qos=0)
        elif "/messages/events/" in topic:
            self.telemetry.append(json.loads(payload))
        self._tasks.add(asyncio.get_running_loop().create_task(self._notify()))
        return 0

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def patch_desired(self, patch: dict[str, Any]) -> None:
        self.desired.update(patch)
        self.desired["$version"] += 1
        body = {**patch, "$version": self.desired["$version"]}
        self._client.publish(
            f"$iothub/twin/PATCH/properties/desired/?$version={self.desired['$version']}",
            json.dumps(body),
            qos=0,
        )

    async def wait_for(self, predicate: Any, within: float = 30.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)


@pytest.fixture
def local_hub(dev_pki):
    """mosquitto with TLS on 127.0.0.1:8883, any credentials accepted (SAS is not checked)."""
    if not port_free(HUB_PORT):
        pytest.skip("port 8883 (fixed by azure-iot-device) is taken on this machine")
    workdir = Path(tempfile.mkdtemp(prefix="amora-iothub-"))
    for src, name in (
        (dev_pki.ca_file, "ca.pem"),
        (dev_pki.server_cert_file, "server.pem"),
        (dev_pki.server_key_file, "server.key"),
    ):
        shutil.copyfile(src, workdir / name)
    config = workdir / "mosquitto.conf"
    config.write_text(
        f"""
per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
listener {HUB_PORT} 127.0.0.1
cafile {workdir / "ca.pem"}
certfile {workdir / "server.pem"}
keyfile {workdir / "server.key"}
tls_version tlsv1.2
"""
    )
    if os.geteuid() == 0:
        shutil.chown(workdir, "mosquitto")
        for path in workdir.iterdir():
            shutil.chown(path, "mosquitto")
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config)],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 10
        while port_free(HUB_PORT):  # bounded readiness wait for a process we started
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"local hub did not start: {(workdir / 'mosquitto.log').read_text()}")
            time.sleep(0.01)
        yield dev_pki.ca_file.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def connection_string() -> str:
    key = base64.b64encode(os.urandom(32)).decode()
    return f"HostName=localhost;DeviceId={DEVICE};SharedAccessKey={key}"


async def send_ping(app, client, key) -> CommandStatus:
    command, payload = app.command(DEVICE, Ping())
    client.publish(
        commands_topic(DEVICE),
        payload,
        content_type=Codec.MSGPACK.value,
        correlation_data=command.id.encode(),
    )
    # A grant from a key the device does not trust is refused before authentication: the
    # answer then names a digest of the payload instead of the (unauthenticated) command id.
    ids = {command.id, unauthenticated_id(payload)}
    answer = await client.wait_for(lambda r: r.topic == responses_topic(DEVICE) and r.message(key).command_id in ids)
    status: CommandStatus = answer.message(key).status
    return status


async def test_desired_properties_rotate_keys_at_run_time(local_hub, dev_pki, broker, live_device, live_app) -> None:
    twin = TwinResponder({"display_name": "Kitchen"})
    await twin.start(dev_pki.client_context())
    device = live_device(broker)
    key = device.signing_key.public_key
    new_authz = SigningKey.generate()
    app, client = live_app(broker, (DEVICE,), issuer=new_authz)
    plane = IoTHubPlane(connection_string(), server_ca=local_hub, telemetry_interval_s=0.2, report_interval_s=0.05)
    try:
        async with device.agent(SimulatedPlayer(), management=plane) as agent, client:
            await asyncio.wait_for(agent.wait_online(), 15)
            await client.subscribe(responses_topic(DEVICE))
            # Reported properties describe the agent, with the display name from the twin.
            await twin.wait_for(lambda: twin.reported.get("display_name") == "Kitchen")
            assert twin.reported["agent_version"]
            assert twin.reported["mpd_version"] == "simulated-0.24"
            assert twin.reported["connected_broker"] == f"{broker.host}:{broker.device_port}"

            # Grants from a key the device does not trust yet are refused...
            assert await send_ping(app, client, key) is CommandStatus.REJECTED
            # ...until a desired-properties patch adds that key.
            twin.patch_desired({"trusted_authz_keys": [base64.b64encode(new_authz.public_key.raw).decode()]})
            await twin.wait_for(lambda: twin.reported.get("trusted_authz_kids") == [new_authz.public_key.kid])
            assert await send_ping(app, client, key) is CommandStatus.SUCCEEDED

            # Usage telemetry goes out in batches.
            await twin.wait_for(lambda: any(t.get("commands") for t in twin.telemetry))
    finally:
        await twin.stop()


async def test_unreachable_hub_does_not_touch_real_time_work(broker, live_device, live_app) -> None:
    if not port_free(HUB_PORT):
        pytest.skip("port 8883 (fixed by azure-iot-device) is taken on this machine")
    device = live_device(broker)
    key = device.signing_key.public_key
    app, client = live_app(broker, (DEVICE,))
    plane = IoTHubPlane(connection_string(), server_ca=None, call_timeout_s=2.0)
    async with device.agent(SimulatedPlayer(), management=plane) as agent, client:
        await asyncio.wait_for(agent.wait_online(), 15)
        await client.subscribe(responses_topic(DEVICE))
        for _ in range(3):
            assert await send_ping(app, client, key) is CommandStatus.SUCCEEDED
        assert plane.sessions == 0
