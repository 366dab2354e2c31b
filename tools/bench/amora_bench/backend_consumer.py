"""Backend consumer throughput: verified states per second one `amora_sync.backend` replica sustains.

Side by side, in the same run and on the same broker (the Amora mosquitto: TLS, dynamic
security, the backend's role and shared subscription exactly as the authz service creates
them), each phase alone:

* ``bare``: a gmqtt client on the backend's shared subscription (QoS 1, acknowledged on
  receipt), counting messages: no verification, the floor of what any consumer costs;
* ``consumer``: `amora_sync.backend.BackendConsumer` (replica 1 of 1): every state verified
  (Ed25519, topic binding, schema), checked against already acknowledged ones, handed to the
  ``async for`` loop and acknowledged only when the loop asks for the next one.

Devices in separate processes (mTLS on the device listener, one per device) publish signed
QoS 1 states as fast as the broker acknowledges them, so the consumer is saturated when it is
the slower side; the figure is the steady rate from the first tenth of the messages to the
last one received, and the publishers' own rate is reported beside it (a consumer rate close
to it means the publishers, not the consumer, were the limit). mosquitto drops what exceeds a
slow subscriber's queue (``max_queued_messages`` 1000): counted as ``dropped``, it does not
change a rate. The device keys come from an in-process mock of ``/v1/backend/devices``: the
authz service is not what is measured.

Run: ``python -m amora_bench.backend_consumer [--count 5000] [--devices 2] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gmqtt
import httpx
import msgspec

from amora_bench._common import broker_for_bench
from amora_bench._rig import device_identity, start_publisher
from amora_devtools._gmqtt import NO_RECONNECT
from amora_devtools._mqtt import client_ssl_context
from amora_devtools.dynsec import dynsec
from amora_devtools.fakedevice import FakeDevice
from amora_protocol import (
    BackendRole,
    DeviceKeyPage,
    DevicePublicKeys,
    SigningKey,
    TopicKind,
    backend_account,
    backend_acls,
    backend_replica_account,
    shared_subscription,
)
from amora_sync import Endpoint
from amora_sync.backend import BackendConsumer, BackendCredentials

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

    from amora_devtools.broker import BrokerProcess

DRAIN_S = 5.0  # a phase ends this long after the last message arrived (the rest was dropped)


def _publisher(  # noqa: PLR0913 - a process entry point takes plain values
    *,
    conn: Connection,
    host: str,
    port: int,
    ca_file: str,
    cert: tuple[str, str],
    device_id: str,
    signing_key_raw: bytes,
    rate: float,
    count: int,
) -> None:
    """Publish ``count`` signed QoS 1 states as fast as the broker acknowledges them; send back (first, last) ns.

    ``rate`` is not used (`_rig.start_publisher` passes it): this publisher is not paced.
    """
    del rate

    async def publish() -> tuple[int, int]:
        device = FakeDevice(
            device_id=device_id,
            signing_key=SigningKey.from_raw(signing_key_raw),
            cert_file=Path(cert[0]),
            key_file=Path(cert[1]),
            ca_file=Path(ca_file),
            host=host,
            port=port,
        )
        async with device:
            conn.send("ready")
            await asyncio.to_thread(conn.recv)  # go
            first = time.monotonic_ns()
            for _ in range(count):
                await device.publish_state(playing=True)
            await device.drained()
            return first, time.monotonic_ns()

    conn.send(asyncio.run(publish()))
    conn.close()


def _backend(broker: BrokerProcess, name: str) -> BackendCredentials:
    """Create the backend's role and its one replica account as the authz service does."""
    password = secrets.token_urlsafe(16)
    account = backend_replica_account(name, 1)
    acls = [
        {"acltype": a.acltype, "topic": a.topic, "allow": a.allow} for a in backend_acls(name, BackendRole.ANALYTICS)
    ]
    dynsec(
        broker,
        [
            {"command": "createRole", "rolename": backend_account(name), "acls": acls},
            {
                "command": "createClient",
                "username": account,
                "password": password,
                "clientid": account,
                "roles": [{"rolename": backend_account(name)}],
            },
        ],
    )
    return BackendCredentials(
        name=name,
        password=password,
        role=BackendRole.ANALYTICS,
        replicas=1,
        endpoints=(Endpoint(host=broker.host, port=broker.app_port),),
    )


def _keys_client(devices: dict[str, bytes]) -> httpx.AsyncClient:
    """``/v1/backend/devices`` served in-process with the devices' public keys."""
    page = DeviceKeyPage(
        devices=tuple(
            DevicePublicKeys(
                device_id=device_id,
                signing_key=base64.b64encode(SigningKey.from_raw(raw).public_key.raw).decode(),
                encryption_key=base64.b64encode(bytes(32)).decode(),
            )
            for device_id, raw in sorted(devices.items())
        )
    )
    body = msgspec.json.encode(page)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/backend/devices":
            return httpx.Response(200, content=body, headers={"content-type": "application/json"})
        return httpx.Response(404, json={"code": "not_found", "message": "no such device"})

    return httpx.AsyncClient(base_url="http://authz.bench", transport=httpx.MockTransport(answer))


async def _bare(broker: BrokerProcess, credentials: BackendCredentials, arrived: Callable[[], None]) -> gmqtt.Client:
    account = backend_replica_account(credentials.name, 1)
    client = gmqtt.Client(account, clean_session=True)
    client.set_config({"reconnect_retries": NO_RECONNECT})
    client.set_auth_credentials(account, credentials.password)
    subscribed = asyncio.Event()
    client.on_message = lambda *_args: arrived()
    client.on_subscribe = lambda *_args: subscribed.set()
    await client.connect(broker.host, broker.app_port, ssl=client_ssl_context(broker.ca_file), keepalive=30)
    client.subscribe(gmqtt.Subscription(shared_subscription(credentials.name, TopicKind.STATE), qos=1))
    async with asyncio.timeout(10):
        await subscribed.wait()
    return client


async def _phase(  # noqa: C901 - one phase: set-up, publish, drain, figures
    kind: str, broker: BrokerProcess, *, count: int, devices: int, known: dict[str, bytes]
) -> dict[str, Any]:
    name = f"bench-{kind}-{secrets.token_hex(2)}"
    credentials = _backend(broker, name)
    identities = {f"{name}-d{n}": device_identity(broker, f"{name}-d{n}") for n in range(devices)}
    # Every device of the run: the retained states of an earlier phase reach this one's subscription too.
    known.update({d: raw for d, (_cert, raw, _enc) in identities.items()})
    arrivals: list[float] = []
    last_arrival = asyncio.Event()
    total = count * devices

    def arrived() -> None:
        arrivals.append(time.perf_counter())
        last_arrival.set()

    async with contextlib.AsyncExitStack() as stack:
        if kind == "bare":
            client = await _bare(broker, credentials, arrived)
            stack.push_async_callback(client.disconnect)
        else:
            http = await stack.enter_async_context(_keys_client(known))
            consumer = await stack.enter_async_context(
                BackendConsumer(
                    "http://authz.bench",
                    credentials,
                    replica=1,
                    ca_file=str(broker.ca_file),
                    http_client=http,
                    takeover_delay=60,
                )
            )

            async def consume() -> None:
                async for _item in consumer:
                    arrived()

            task = asyncio.create_task(consume(), name="bench-consumer")
            stack.callback(task.cancel)
        publishers = [
            start_publisher(
                broker, cert=cert, device_id=device_id, signing_raw=raw, rate=math.inf, count=count, target=_publisher
            )
            for device_id, (cert, raw, _enc) in identities.items()
        ]
        try:
            for _proc, pipe in publishers:
                if not (await asyncio.to_thread(pipe.poll, 30) and await asyncio.to_thread(pipe.recv) == "ready"):
                    raise RuntimeError(f"{kind}: a device process did not get ready")
            for _proc, pipe in publishers:
                pipe.send("go")
            spans: list[tuple[int, int]] = []
            for _proc, pipe in publishers:
                if not await asyncio.to_thread(pipe.poll, 300):
                    raise RuntimeError(f"{kind}: a device process sent no results")
                spans.append(await asyncio.to_thread(pipe.recv))
            while len(arrivals) < total:
                last_arrival.clear()
                try:
                    async with asyncio.timeout(DRAIN_S):
                        await last_arrival.wait()
                except TimeoutError:
                    break  # the rest was dropped by the broker (queue full)
        finally:
            for proc, _pipe in publishers:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
    span_s = (max(end for _, end in spans) - min(first for first, _ in spans)) / 1e9
    publish_rate = total / span_s if span_s > 0 else 0.0
    start = len(arrivals) // 10
    window = arrivals[-1] - arrivals[start] if len(arrivals) > start + 1 else 0.0
    rate = (len(arrivals) - 1 - start) / window if window > 0 else 0.0
    return {
        "received": len(arrivals),
        "published": total,
        "dropped": total - len(arrivals),
        "states_per_s": round(rate),
        "publish_per_s": round(publish_rate),
    }


def run(*, count: int = 5000, devices: int = 2) -> dict[str, Any]:
    """Both phases on one fresh broker; the consumer's rate and its ratio to the bare subscriber."""
    with broker_for_bench() as broker:
        known: dict[str, bytes] = {}
        bare = asyncio.run(_phase("bare", broker, count=count, devices=devices, known=known))
        consumer = asyncio.run(_phase("consumer", broker, count=count, devices=devices, known=known))
    ratio = consumer["states_per_s"] / bare["states_per_s"] if bare["states_per_s"] else None
    summary = (
        f"One `amora_sync.backend` consumer sustained **{consumer['states_per_s']:,} verified states/s** "
        f"({devices} devices publishing {consumer['publish_per_s']:,}/s; {consumer['dropped']:,} of "
        f"{consumer['published']:,} dropped by the broker's queue limit while it was saturated). A bare "
        f"subscriber on the same shared subscription received {bare['states_per_s']:,}/s (publishers at "
        f"{bare['publish_per_s']:,}/s): ratio {ratio if ratio is None else round(ratio, 2)}, an upper bound "
        "when the bare subscriber kept up with the publishers."
    )
    return {
        "summary": summary,
        "count_per_device": count,
        "devices": devices,
        "bare": bare,
        "consumer": consumer,
        "consumer_states_per_s": consumer["states_per_s"],
        "consumer_vs_bare": None if ratio is None else round(ratio, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="amora_bench.backend_consumer", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=5000, help="states per device (default 5000)")
    parser.add_argument("--devices", type=int, default=2, help="publishing devices, one process each (default 2)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = run(count=args.count, devices=args.devices)
    text = json.dumps(figures, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
