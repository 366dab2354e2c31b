from __future__ import annotations

import msgspec
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
    # Ids are forgotten once their commands could no longer be accepted anyway, whatever
    # clock offset (within the allowance) a sender is judged with.
    later = NOW + 10_000 + 2 * guard.max_skew_ms
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


def test_clock_skew_carries_the_measured_offset():
    guard = ap.CommandGuard(max_skew_ms=1_000)
    with pytest.raises(ap.ClockSkew) as caught:
        guard.check(_header(1, ts=NOW + 5_000), _cmd("a", issued=NOW + 5_000), now_ms=NOW)
    assert caught.value.offset_ms == -5_000


def test_sequence_windows_survive_a_restart():
    guard = ap.CommandGuard(window=8)
    for seq in (10, 8, 3):
        guard.check(_header(seq), _cmd(f"id{seq}"), now_ms=NOW)
    saved = guard.windows()
    assert saved == [ap.SequenceWindow(sender="s1", epoch=1, highest=10, bits=0b101 | 1 << 7)]
    restored = ap.CommandGuard(window=8)
    restored.restore_windows(saved)
    for seq in (10, 8, 3, 2):  # seen, or too old
        with pytest.raises(ap.Replayed):
            restored.check(_header(seq), _cmd(f"new{seq}"), now_ms=NOW)
    restored.check(_header(9), _cmd("new9"), now_ms=NOW)
    # Replaying recorded sequence numbers rebuilds the same window.
    replayed = ap.CommandGuard(window=8)
    for seq in (10, 8, 3):
        replayed.note_sequence("s1", 1, seq)
    assert replayed.windows() == saved


def test_response_repeats_the_original_outcome_and_old_readers_ignore_new_fields():

    answer = ap.CommandResponse(
        command_id="c1",
        device_id="p1",
        status=ap.CommandStatus.REJECTED,
        at_ms=NOW,
        reason=ap.RejectReason.CLOCK_SKEW,
        clock_offset_ms=-45_000,
        duplicate=True,
    )
    wire = msgspec.msgpack.encode(answer)
    assert msgspec.msgpack.decode(wire, type=ap.CommandResponse) == answer

    class OldResponse(msgspec.Struct):
        command_id: str
        device_id: str
        status: str
        at_ms: int
        reason: str | None = None

    old = msgspec.msgpack.decode(wire, type=OldResponse)
    assert (old.status, old.reason) == ("rejected", "clock-skew")
    plain = msgspec.msgpack.decode(
        msgspec.msgpack.encode(
            ap.CommandResponse(command_id="c2", device_id="p1", status=ap.CommandStatus.SUCCEEDED, at_ms=NOW)
        )
    )
    assert set(plain) == {"command_id", "device_id", "status", "at_ms"}  # defaults stay off the wire


@pytest.mark.parametrize("device_ahead_ms", [-25_000, -10_000, 0, 10_000, 25_000])
def test_skew_within_the_allowance_works_both_ways(device_ahead_ms):
    guard = ap.CommandGuard(max_skew_ms=30_000)
    now = NOW + device_ahead_ms + 5  # 5 ms in transit
    guard.check(_header(1), _cmd("a", ttl=10_000), now_ms=now, clock_offset_ms=device_ahead_ms)
    assert guard.seen("a")


@pytest.mark.parametrize("device_ahead_ms", [-45_000, 45_000, 3_600_000])
def test_skew_beyond_the_allowance_is_clock_skew_with_the_measured_offset(device_ahead_ms):
    guard = ap.CommandGuard(max_skew_ms=30_000)
    with pytest.raises(ap.ClockSkew) as caught:
        guard.check(_header(1), _cmd("a"), now_ms=NOW + device_ahead_ms, clock_offset_ms=device_ahead_ms)
    assert caught.value.offset_ms == device_ahead_ms
    assert not guard.seen("a")


def test_a_late_command_from_a_sender_with_a_good_clock_is_still_expired():
    guard = ap.CommandGuard(max_skew_ms=30_000)
    with pytest.raises(ap.Expired):
        guard.check(_header(1), _cmd("a", ttl=10_000), now_ms=NOW + 12_000, clock_offset_ms=0)


def test_ids_outlive_every_sender_time_the_allowance_lets_in():
    guard = ap.CommandGuard(max_skew_ms=30_000)
    guard.check(_header(1), _cmd("a", ttl=10_000), now_ms=NOW, clock_offset_ms=0)
    # Much later, a replay judged with the largest offset allowed is still known.
    later = NOW + 10_000 + 29_000
    with pytest.raises(ap.Replayed):
        guard.check(_header(2), _cmd("a", ttl=10_000), now_ms=later, clock_offset_ms=30_000)


def test_a_forgotten_id_is_accepted_again():
    guard = ap.CommandGuard()
    guard.check(_header(1), _cmd("a"), now_ms=NOW)
    guard.forget("a")  # e.g. it could not be recorded, so it never ran
    guard.check(_header(2), _cmd("a"), now_ms=NOW)
