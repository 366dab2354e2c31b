"""Connection scale: many concurrent TLS MQTT connections held, latency under that load, and a reconnect storm.

For each connection count: open that many TLS connections to the broker's app listener (MQTT 5,
username/password through dynamic security), hold them, measure publish -> receive latency
between two more clients while they are held, record connect times and the broker's and this
client's memory, then restart the broker and time how long the clients (exponential backoff with
full jitter, as the SDK does) take until every one is connected again.

Run alone: ``python -m amora_bench.connections --counts 1000 --hold 3``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import TYPE_CHECKING, Any

from amora_bench._common import broker_for_bench, latency_summary, raise_fd_limit, rss_mb
from amora_bench._rawmqtt import RawMqtt, RawMqttError

if TYPE_CHECKING:
    import ssl

    from amora_devtools.broker import BrokerProcess

__all__ = ["run"]

USERNAME = "bench-conn"
PASSWORD = "bench-conn-password"  # noqa: S105 - a throwaway account on a throwaway broker
LAT_TOPIC = "bench/latency"
SOURCE_HOSTS = [f"127.0.0.{i}" for i in range(2, 10)]  # spreads ephemeral ports (TIME_WAIT)
HANDSHAKE_CONCURRENCY = 64
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 4.0


def _prepare_broker(broker: BrokerProcess) -> None:
    from amora_devtools.broker import dynsec  # noqa: PLC0415

    dynsec(
        broker,
        [
            {
                "command": "createRole",
                "rolename": "bench-latency",
                "acls": [
                    {"acltype": "publishClientSend", "topic": LAT_TOPIC, "allow": True},
                    {"acltype": "publishClientReceive", "topic": LAT_TOPIC, "allow": True},
                    {"acltype": "subscribePattern", "topic": LAT_TOPIC, "allow": True},
                ],
            },
            {
                "command": "createClient",
                "username": USERNAME,
                "password": PASSWORD,
                "roles": [{"rolename": "bench-latency"}],
            },
        ],
    )


class _Fleet:
    """Holds N connections; reconnects each with backoff + full jitter when it drops."""

    def __init__(self, broker: BrokerProcess, ssl_context: ssl.SSLContext, count: int) -> None:
        self.broker = broker
        self.ssl_context = ssl_context
        self.count = count
        self.connected = 0
        self.connect_ms: list[float] = []
        self.attempts = 0
        self.all_connected = asyncio.Event()
        self.gate = asyncio.Semaphore(HANDSHAKE_CONCURRENCY)
        self.stopping = False

    async def _connect_once(self, i: int) -> RawMqtt:
        async with self.gate:
            self.attempts += 1
            start = time.perf_counter()
            conn = await RawMqtt.connect(
                self.broker.host,
                self.broker.app_port,
                ssl_context=self.ssl_context,
                client_id=f"bench-{i}",
                username=USERNAME,
                password=PASSWORD,
                local_host=SOURCE_HOSTS[i % len(SOURCE_HOSTS)],
            )
            self.connect_ms.append((time.perf_counter() - start) * 1000)
            return conn

    async def hold(self, i: int) -> None:
        failures = 0
        while not self.stopping:
            try:
                conn = await self._connect_once(i)
            except (OSError, RawMqttError, asyncio.IncompleteReadError):
                failures += 1
                await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**failures)))  # noqa: S311
                continue
            failures = 0
            self.connected += 1
            if self.connected == self.count:
                self.all_connected.set()
            try:
                await conn.wait_closed_by_peer()
            finally:
                conn.close()
                self.connected -= 1
                self.all_connected.clear()


async def _latency(broker: BrokerProcess, ssl_context: ssl.SSLContext, messages: int, rate: int) -> dict[str, Any]:
    """QoS 0 publish -> receive latency between two extra clients, at ``rate`` msg/s."""

    async def client(name: str) -> RawMqtt:
        return await RawMqtt.connect(
            broker.host,
            broker.app_port,
            ssl_context=ssl_context,
            client_id=name,
            username=USERNAME,
            password=PASSWORD,
        )

    sub = await client("bench-lat-sub")
    pub = await client("bench-lat-pub")
    await sub.subscribe(LAT_TOPIC)
    samples: list[float] = []

    async def receive() -> None:
        while len(samples) < messages:
            payload = await sub.next_payload()
            samples.append((time.perf_counter_ns() - int(payload)) / 1e6)

    receiver = asyncio.create_task(receive(), name="bench.latency-receiver")
    interval = 1 / rate
    start = time.perf_counter()
    for n in range(messages):
        delay = start + n * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pub.publish(LAT_TOPIC, str(time.perf_counter_ns()).encode())
    try:
        await asyncio.wait_for(receiver, timeout=30)
    finally:
        sub.close()
        pub.close()
    return latency_summary(samples) | {"samples_ms": [round(s, 3) for s in samples]}


async def _one_level(broker: BrokerProcess, count: int, hold_s: float, lat_messages: int) -> dict[str, Any]:
    ssl_context = broker.client_context()
    rss_before = rss_mb()
    broker_before = rss_mb(broker.pid)
    fleet = _Fleet(broker, ssl_context, count)
    start = time.perf_counter()
    tasks = [asyncio.create_task(fleet.hold(i), name=f"bench.conn-{i}") for i in range(count)]
    try:
        await asyncio.wait_for(fleet.all_connected.wait(), timeout=max(60, count / 50))
        connect_all_s = time.perf_counter() - start
        connect_ms = list(fleet.connect_ms)
        latency = await _latency(broker, ssl_context, lat_messages, rate=1000)
        hold_start = time.perf_counter()
        await asyncio.sleep(hold_s)  # holding the connections is the measurement itself
        held = fleet.connected
        result: dict[str, Any] = {
            "connections": count,
            "connect_all_s": round(connect_all_s, 2),
            "connect_rate_per_s": round(count / connect_all_s),
            "connect": latency_summary(connect_ms),
            "held_s": round(time.perf_counter() - hold_start, 1),
            "held_at_end": held,
            "broker_rss_mb": rss_mb(broker.pid),
            "broker_rss_per_conn_kb": round((rss_mb(broker.pid) - broker_before) * 1024 / count, 2),
            "client_rss_mb": rss_mb(),
            "client_rss_per_conn_kb": round((rss_mb() - rss_before) * 1024 / count, 2),
            "latency": latency,
        }
        # Reconnect storm: restart the broker under the held connections.
        attempts_before = fleet.attempts
        storm_start = time.perf_counter()
        await asyncio.to_thread(broker.restart)
        ready = time.perf_counter() - storm_start
        await asyncio.wait_for(fleet.all_connected.wait(), timeout=max(120, count / 20))
        result["storm"] = {
            "broker_restart_s": round(ready, 2),
            "all_back_s": round(time.perf_counter() - storm_start, 2),
            "all_back_after_ready_s": round(time.perf_counter() - storm_start - ready, 2),
            "connect_attempts": fleet.attempts - attempts_before,
        }
        return result
    finally:
        fleet.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _small_tls_buffers() -> None:
    """Shrink asyncio's per-connection TLS read buffer from 256 KiB to 32 KiB.

    asyncio allocates ``SSLProtocol.max_size`` bytes per TLS connection up front; with
    thousands of idle connections that buffer, not the broker, dominates this client's memory.
    A TLS record is at most ~16 KiB, so 32 KiB only costs extra reads on bulk transfers.
    """
    import asyncio.sslproto  # noqa: PLC0415

    asyncio.sslproto.SSLProtocol.max_size = 32 * 1024


def run(*, counts: list[int], hold_s: float, lat_messages: int = 2000) -> dict[str, Any]:
    """Measure every connection count on a fresh broker each; return the figures."""
    _small_tls_buffers()
    limit = raise_fd_limit()
    levels = []
    for count in counts:
        usable = min(count, limit - 200)  # the broker and this process each need a few spare fds
        with broker_for_bench() as broker:
            _prepare_broker(broker)
            level = asyncio.run(_one_level(broker, usable, hold_s, lat_messages))
        level["requested"] = count
        if usable < count:
            level["capped_by"] = f"open-file hard limit {limit} per process (no CAP_SYS_RESOURCE here)"
        levels.append(level)
    return {"levels": levels}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--counts", default="1000", help="comma-separated connection counts")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds to hold each level")
    args = parser.parse_args(argv)
    result = run(counts=[int(c) for c in args.counts.split(",")], hold_s=args.hold)
    for level in result["levels"]:
        level["latency"].pop("samples_ms", None)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
