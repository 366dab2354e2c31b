"""The delivery path and an idle client leave the cyclic garbage collector (almost) nothing.

CPython's collector runs when GC-tracked objects allocated minus those freed pass 700 since
its last run, and each run walks every young tracked object. A process holding thousands of
sessions (a backend, the fleet benchmark's load generators) therefore pays for every tracked
object a state leaves waiting for the event loop, and for every timer an idle client re-arms.
These tests count such objects (no timing): states and the keys they wait under are untracked,
a burst of deliveries leaves a bounded number of tracked objects per state, and an idle
client's outbox keeps no timer.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import secrets

import pytest

from amora_protocol import (
    Codec,
    DeviceState,
    EncryptionKey,
    PlaybackStatus,
    Sender,
    SetVolume,
    SigningKey,
    now_ms,
    state_topic,
)
from amora_sync._cache import DeviceCache, Watch
from amora_sync._errors import CommandExpiredError
from amora_sync._inbound import InboundVerifier
from amora_sync._outbox import Outbox
from amora_sync._session import BrokerCredentials, DeviceInfo, Endpoint, Session
from amora_sync._stats import ClientStats

PROPS = {"content_type": [Codec.MSGPACK.value]}
CLIENTS = 100


class _Client:
    """What one `AmoraClient` holds on the delivery path: verifier, cache, a watch and its consumer."""

    def __init__(self, index: int) -> None:
        self.device_id = f"player-{index}"
        self.key = SigningKey.generate()
        self.sender = Sender(self.device_id, self.key, epoch=secrets.randbits(62))
        self.stats = ClientStats()
        self.cache = DeviceCache(stats=self.stats)
        info = DeviceInfo(device_id=self.device_id, signing_key=self.key.public_key, encryption_key=None)
        session = Session(
            session_id=f"s-{index}",
            expires_at_ms=now_ms() + 60_000,
            broker=BrokerCredentials(
                endpoints=(Endpoint(host="127.0.0.1", port=1),), username="s", password="x", client_id=f"s-{index}"
            ),
            grant=b"",
            devices={self.device_id: info},
            authz_keys=(),
        )
        self.verify = InboundVerifier(
            session=lambda: session,
            decrypt_key=EncryptionKey.generate(),
            on_state=self.cache.on_state,
            on_status=lambda _status: None,
            on_response=lambda _response: None,
            stats=self.stats,
            logger=logging.getLogger("test"),
        )
        self.watch = Watch(self.cache, None, include_connection=False, max_devices=10)
        self.received: list[DeviceState] = []
        self.version = 0

    def payload(self) -> bytes:
        self.version += 1
        state = DeviceState(
            device_id=self.device_id,
            version=self.version,
            status=PlaybackStatus.PLAY,
            sampled_at_ms=now_ms(),
            volume=self.version % 100,
        )
        return self.sender.encode(state_topic(self.device_id), state, now_ms=now_ms())

    async def consume(self) -> None:
        async for event in self.watch:
            assert isinstance(event, DeviceState)
            self.received.append(event)


def _young() -> collections.Counter[str]:
    """Tracked objects made since the last `gc.freeze()` and still alive, by type."""
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


async def _settle(clients: list[_Client], *, received: int) -> None:
    """Let the loop run until every consumer has `received` states and waits for the next."""
    for _ in range(1000):  # bounded: each round lets every ready task take one step
        if all(len(c.received) == received for c in clients):
            break
        await asyncio.sleep(0)
    for _ in range(5):  # and the steps that take each consumer back to its wait
        await asyncio.sleep(0)
    assert all(len(c.received) == received for c in clients)


def test_a_delivered_state_and_the_key_it_waits_under_are_untracked() -> None:
    client = _Client(0)
    aiter(client.watch)  # registers the watch with the cache
    client.verify(state_topic(client.device_id), client.payload(), PROPS)
    state = client.cache.state(client.device_id)
    assert state is not None
    assert not gc.is_tracked(state)
    waiting = client.watch._queue._items  # what the queue holds per state
    assert [type(key) for key in waiting] == [str]
    assert not any(gc.is_tracked(key) or gc.is_tracked(value) for key, value in waiting.items())


async def test_a_burst_of_deliveries_leaves_few_tracked_objects_per_state() -> None:
    # One loop iteration that reads many sockets (a loaded process holding many sessions)
    # hands out a state per session before any consumer runs: what each leaves alive until
    # then adds up towards the collector's threshold.
    clients = [_Client(i) for i in range(CLIENTS)]
    consumers = [asyncio.create_task(c.consume()) for c in clients]
    payloads = [c.payload() for c in clients]
    await _settle(clients, received=0)
    gc.collect()
    gc.freeze()
    try:
        for client, payload in zip(clients, payloads, strict=True):
            client.verify(state_topic(client.device_id), payload, PROPS)
        waiting = _young()
        await _settle(clients, received=1)
        after = _young()
    finally:
        gc.unfreeze()
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
    # Measured: 2 per state while waiting (the Handle that wakes the consumer and its
    # arguments; a (device, kind) tuple key made it 3), under 5 once every consumer waits
    # again (its coroutine, future and wake-up; the queue's `get` coroutine and an Event's
    # `wait` made it 7).
    assert sum(waiting.values()) <= 2.5 * CLIENTS, waiting.most_common(8)
    assert sum(after.values()) <= 5 * CLIENTS, after.most_common(8)


async def test_an_idle_outbox_keeps_no_timer_and_resends_only_while_a_command_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, every client woke every half resend interval whether or not a command waited:
    # 2,500 idle clients in a process re-armed ~1,700 timers a second, each a handful of
    # tracked objects. Counting the resend loop's sleeps is deterministic; the waits below
    # only give it the chance to run (many intervals each).
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def counted_sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(delay)

    interval = 0.01
    outbox = Outbox(
        max_pending=4,
        resend_interval=interval,
        codec=Codec.MSGPACK,
        session=_no_session,
        sender=_no_sender,
        app_clock_offset=lambda: None,
        stats=ClientStats(),
        logger=logging.getLogger("test"),
    )
    monkeypatch.setattr(asyncio, "sleep", counted_sleep)
    resends = asyncio.create_task(outbox.run_resends())
    try:
        await real_sleep(20 * interval)
        assert sleeps == []  # idle: parked on an event, no timer
        device = DeviceInfo(device_id="player-1", signing_key=SigningKey.generate().public_key, encryption_key=None)
        # No link: the command waits in the outbox until its deadline, and the loop runs meanwhile.
        with pytest.raises(CommandExpiredError):
            await outbox.send(device, SetVolume(volume=5), timeout=20 * interval, qos=1, if_version=None, seal=False)
        assert len(sleeps) >= 5
        settled = len(sleeps)
        await real_sleep(20 * interval)
        assert len(sleeps) <= settled + 1  # at most the sleep under way when the command expired
    finally:
        resends.cancel()
        await asyncio.gather(resends, return_exceptions=True)


def _no_session() -> Session:
    raise AssertionError("nothing is published without a link")


def _no_sender() -> Sender:
    raise AssertionError("nothing is published without a link")
