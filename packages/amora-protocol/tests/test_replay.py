from __future__ import annotations

import pytest

import amora_protocol as ap

NOW = 1_800_000_000_000


def _header(seq: int, *, sender: str = "s1", epoch: int = 1, ts: int = NOW) -> ap.Header:
    return ap.Header(v=1, type=ap.MessageType.COMMAND, sender=sender, kid="k", epoch=epoch, seq=seq, ts_ms=ts)


def _cmd(cid: str, *, issued: int = NOW, ttl: int = 10_000) -> ap.Command:
    return ap.Command(id=cid, issued_at_ms=issued, expires_at_ms=issued + ttl, action=ap.Pause())


def test_accepts_once_then_refuses_the_same_id_or_seq():
    guard = ap.CommandGuard()
    guard.check(_header(1), _cmd("a"), now_ms=NOW)
    assert guard.seen("a")
    with pytest.raises(ap.Replayed):
        guard.check(_header(2), _cmd("a"), now_ms=NOW)
    with pytest.raises(ap.Replayed):
        guard.check(_header(1), _cmd("b"), now_ms=NOW)
    # Another epoch of the same sender (a restarted app) starts a fresh window.
    guard.check(_header(1, epoch=2), _cmd("c"), now_ms=NOW)


def test_out_of_order_sequence_numbers_within_the_window():
    guard = ap.CommandGuard(window=8)
    guard.check(_header(10), _cmd("a"), now_ms=NOW)
    guard.check(_header(8), _cmd("b"), now_ms=NOW)
    guard.check(_header(9), _cmd("c"), now_ms=NOW)
    with pytest.raises(ap.Replayed):
        guard.check(_header(8), _cmd("d"), now_ms=NOW)
    with pytest.raises(ap.Replayed, match="too old"):
        guard.check(_header(2), _cmd("e"), now_ms=NOW)
    guard.check(_header(100), _cmd("f"), now_ms=NOW)
    guard.check(_header(99), _cmd("g"), now_ms=NOW)


def test_expiry_skew_and_lifetime():
    guard = ap.CommandGuard(max_skew_ms=1_000, max_ttl_ms=60_000)
    with pytest.raises(ap.Expired):
        guard.check(_header(1), _cmd("a", ttl=10), now_ms=NOW + 10)
    with pytest.raises(ap.ClockSkew):
        guard.check(_header(2), _cmd("b", issued=NOW + 1_001), now_ms=NOW)
    with pytest.raises(ap.ClockSkew):
        guard.check(_header(3, ts=NOW + 5_000), _cmd("c"), now_ms=NOW)
    with pytest.raises(ap.SchemaError):
        guard.check(_header(4), _cmd("d", ttl=60_001), now_ms=NOW)
    guard.check(_header(5), _cmd("e", issued=NOW + 999), now_ms=NOW)


def test_memory_is_bounded():
    guard = ap.CommandGuard(max_ids=100, max_senders=10)
    for i in range(1_000):
        guard.check(_header(0, sender=f"s{i}"), _cmd(f"id{i}"), now_ms=NOW)
    assert len(guard) == 100
    assert len(guard._windows) == 10
    # Ids are forgotten once their commands could no longer be accepted anyway.
    later = NOW + 10_000 + guard.max_skew_ms
    guard.check(_header(0, sender="late"), _cmd("late", issued=later), now_ms=later)
    assert len(guard) == 1


def test_remembered_ids_survive_a_restart():
    guard = ap.CommandGuard()
    guard.check(_header(1), _cmd("a"), now_ms=NOW)
    restarted = ap.CommandGuard()
    restarted.remember(guard.remembered())
    with pytest.raises(ap.Replayed):
        restarted.check(_header(1, epoch=9), _cmd("a"), now_ms=NOW + 1)


def test_state_tracker():
    tracker = ap.StateTracker()
    assert tracker.observe("p1", 5) is ap.Freshness.NEWER
    assert tracker.observe("p1", 5) is ap.Freshness.DUPLICATE
    assert tracker.observe("p1", 4) is ap.Freshness.STALE
    assert tracker.observe("p1", 6) is ap.Freshness.NEWER
    assert tracker.observe("p2", 0) is ap.Freshness.NEWER
    assert tracker.current("p1") == 6
    tracker.forget("p1")
    assert tracker.current("p1") is None
