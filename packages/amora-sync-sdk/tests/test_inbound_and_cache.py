"""Inbound verification and the cache with its watch fan-out, each on its own (no broker).

Messages are real envelopes signed with `amora_protocol.Sender`; the session is the
value the authz service's answer parses into.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from amora_protocol import (
    Codec,
    CommandResponse,
    CommandStatus,
    ConnectionStatus,
    DeviceState,
    EncryptionKey,
    PlaybackStatus,
    Sender,
    SigningKey,
    connection_topic,
    now_ms,
    responses_topic,
    state_topic,
)
from amora_sync._cache import DeviceCache, Watch
from amora_sync._inbound import InboundVerifier
from amora_sync._session import BrokerCredentials, DeviceInfo, Endpoint, Session
from amora_sync._stats import ClientStats

PROPS = {"content_type": [Codec.MSGPACK.value]}


class _Device:
    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.key = SigningKey.generate()
        self.sender = Sender(device_id, self.key, epoch=secrets.randbits(62))
        self.version = 0

    def info(self) -> DeviceInfo:
        return DeviceInfo(device_id=self.device_id, signing_key=self.key.public_key, encryption_key=None)

    def state(self, *, version: int | None = None) -> tuple[DeviceState, bytes]:
        self.version = self.version + 1 if version is None else version
        state = DeviceState(
            device_id=self.device_id,
            version=self.version,
            status=PlaybackStatus.PAUSE,
            sampled_at_ms=now_ms(),
            volume=10,
        )
        return state, self.sender.encode(state_topic(self.device_id), state, now_ms=now_ms())


def _session(*devices: _Device) -> Session:
    return Session(
        session_id="s-1",
        expires_at_ms=now_ms() + 60_000,
        broker=BrokerCredentials(
            endpoints=(Endpoint(host="127.0.0.1", port=1),), username="s-1", password="x", client_id="s-1"
        ),
        grant=b"",
        devices={d.device_id: d.info() for d in devices},
        authz_keys=(),
    )


class _Sinks:
    def __init__(self) -> None:
        self.states: list[DeviceState] = []
        self.statuses: list[ConnectionStatus] = []
        self.responses: list[CommandResponse] = []


def _verifier(session: Session | None, sinks: _Sinks, stats: ClientStats) -> InboundVerifier:
    return InboundVerifier(
        session=lambda: session,
        decrypt_key=EncryptionKey.generate(),
        on_state=sinks.states.append,
        on_status=sinks.statuses.append,
        on_response=sinks.responses.append,
        stats=stats,
        logger=logging.getLogger("test"),
    )


def test_verified_messages_reach_their_sink_by_kind():
    device = _Device("player-1")
    sinks, stats = _Sinks(), ClientStats()
    verify = _verifier(_session(device), sinks, stats)
    state, payload = device.state()
    verify(state_topic("player-1"), payload, PROPS)
    status = ConnectionStatus(device_id="player-1", online=True, at_ms=now_ms())
    verify(
        connection_topic("player-1"), device.sender.encode(connection_topic("player-1"), status, now_ms=now_ms()), PROPS
    )
    response = CommandResponse(command_id="c-1", device_id="player-1", status=CommandStatus.SUCCEEDED, at_ms=now_ms())
    topic = responses_topic("player-1")
    verify(topic, device.sender.encode(topic, response, now_ms=now_ms()), PROPS)
    assert sinks.states == [state]
    assert sinks.statuses == [status]
    assert sinks.responses == [response]
    assert (stats.received, stats.invalid) == (3, 0)


def test_forged_misplaced_foreign_and_garbage_messages_are_dropped_and_counted():
    device, other, stranger = _Device("player-1"), _Device("player-2"), _Device("player-9")
    sinks, stats = _Sinks(), ClientStats()
    verify = _verifier(_session(device, other), sinks, stats)
    forger = _Device("player-1")  # right id, wrong key
    _, forged = forger.state()
    verify(state_topic("player-1"), forged, PROPS)
    _, genuine = device.state()
    verify(state_topic("player-2"), genuine, PROPS)  # signed for player-1's topic
    _, foreign = stranger.state()
    verify(state_topic("player-9"), foreign, PROPS)  # not a session device
    verify(state_topic("player-1"), b"\x93garbage", PROPS)
    verify("not/an/amora/topic", genuine, PROPS)
    assert sinks.states == []
    assert (stats.received, stats.invalid) == (5, 5)


def test_nothing_is_accepted_before_a_session():
    device = _Device("player-1")
    sinks, stats = _Sinks(), ClientStats()
    _, payload = device.state()
    _verifier(None, sinks, stats)(state_topic("player-1"), payload, PROPS)
    assert sinks.states == []


async def test_cache_orders_by_version_and_fans_out_to_the_watches_that_want_it():
    stats = ClientStats()
    cache = DeviceCache(stats=stats)
    one, two = _Device("player-1"), _Device("player-2")
    first, _ = one.state()
    cache.on_state(first)
    async with Watch(cache, frozenset({"player-1"}), include_connection=False, max_devices=1) as mine:
        everything = Watch(cache, None, include_connection=True, max_devices=10)
        async with everything:
            assert await anext(mine) == first  # the current state first
            assert await anext(everything) == first
            newer, _ = one.state()
            older, _ = one.state(version=1)
            theirs, _ = two.state()
            status = ConnectionStatus(device_id="player-2", online=False, at_ms=now_ms())
            for event in (newer, older, theirs):
                cache.on_state(event)
            cache.on_status(status)
            cache.on_status(status)  # the same status again: stale
            assert await anext(mine) == newer
            assert [await anext(everything) for _ in range(3)] == [newer, theirs, status]
    assert cache.state("player-1") == newer
    assert (stats.delivered, stats.stale) == (4, 2)


async def test_a_slow_watch_keeps_only_the_newest_state_and_closing_ends_every_watch():
    cache = DeviceCache(stats=ClientStats())
    device = _Device("player-1")
    watch = Watch(cache, None, include_connection=False, max_devices=1)
    events = aiter(watch)
    states = [device.state()[0] for _ in range(5)]
    for state in states:
        cache.on_state(state)
    assert watch.superseded == 4
    assert await anext(events) == states[-1]
    cache.close()
    async with asyncio.timeout(5):
        assert [e async for e in events] == []
    late = Watch(cache, None, include_connection=False, max_devices=1)
    assert [e async for e in late] == []  # registered after close: ends at once
    cache.retain_only([])
    assert cache.state("player-1") is None


def test_a_stale_last_will_does_not_show_a_live_device_offline():
    stats = ClientStats()
    cache = DeviceCache(stats=stats)
    online = ConnectionStatus(device_id="player-1", online=True, at_ms=now_ms(), version=8)
    stale_will = ConnectionStatus(device_id="player-1", online=False, at_ms=now_ms(), reason="lost", version=5)
    real_will = ConnectionStatus(device_id="player-1", online=False, at_ms=now_ms(), reason="lost", version=9)
    cache.on_status(online)
    cache.on_status(stale_will)  # an older connection's Will, delivered late
    assert cache.status("player-1") == online
    cache.on_status(real_will)
    assert cache.status("player-1") == real_will
    unversioned = ConnectionStatus(device_id="player-1", online=True, at_ms=now_ms())
    cache.on_status(unversioned)  # an agent that does not number statuses: last one wins
    assert cache.status("player-1") == unversioned
    assert stats.stale == 1
