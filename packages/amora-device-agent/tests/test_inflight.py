"""The link's store of unacknowledged publishes: order, first send times, acknowledgements, no GC work.

A fleet's players process holds thousands of agents, each with publishes in flight: the store
must not keep a GC-tracked object per publish (each would push the cyclic collector's count up
until its acknowledgement; see tools/bench, ``garbage``).
"""

import asyncio
import gc
import time

from amora_agent._mqtt import _Inflight


def test_publishes_wait_in_send_order_with_their_first_send_time() -> None:
    inflight = _Inflight()
    before = time.monotonic()
    inflight.push_message(7, b"publish-7")
    inflight.push_message(3, b"publish-3")
    inflight.push_message(7, b"pubrel-7")  # gmqtt swaps a QoS 2 PUBLISH for its PUBREL
    assert inflight.get_all() == [(7, b"pubrel-7"), (3, b"publish-3")]
    assert 0 <= inflight.oldest_age() <= time.monotonic() - before
    assert inflight.acked_at == 0.0
    inflight.remove_message_by_mid(7)
    assert inflight.acked_at >= before
    assert inflight.get_all() == [(3, b"publish-3")]
    inflight.remove_message_by_mid(99)  # not ours (an inbound packet id): no acknowledgement of ours
    assert len(inflight) == 1


async def test_the_last_acknowledgement_wakes_who_waits_for_an_empty_store() -> None:
    inflight = _Inflight()
    inflight.push_message(1, b"p")
    waiter = asyncio.create_task(inflight.wait_empty())
    await asyncio.sleep(0)
    assert not waiter.done()
    inflight.remove_message_by_mid(1)
    await asyncio.wait_for(waiter, 5)
    assert inflight.is_empty
    assert inflight.oldest_age() == 0.0


def test_publishes_in_flight_are_not_tracked_by_the_collector() -> None:
    inflight = _Inflight()
    gc.collect()
    gc.freeze()
    try:
        for mid in range(1, 101):
            inflight.push_message(mid, b"x" * 64)
        young = [o for o in gc.get_objects() if o is not inflight]
    finally:
        gc.unfreeze()
    # A (package, time) tuple per publish made 100 here.
    assert len(young) < 10, [type(o).__qualname__ for o in young]
    assert len(inflight) == 100
