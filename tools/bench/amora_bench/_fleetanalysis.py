"""Matching the fleet's changes to their deliveries, and where the late ones come from."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from amora_bench._common import latency_summary

if TYPE_CHECKING:
    from array import array
    from collections.abc import Sequence

__all__ = ["LATE_MS", "Window", "analyse_window"]

LATE_MS = 10.0
_BUCKET_NS = 100_000_000


@dataclass(frozen=True, slots=True)
class Window:
    """One window's raw material.

    Attributes:
        players, volumes, stamps: Each change: which player, the volume set, when (ns).
        received: Per SDK process, its deliveries as columns (session, player, volume, ns).
        sessions_of: Player -> the sessions watching it.
        sdk_process_of: Session -> its SDK process.
        player_pauses: The players process's collector pauses (start ns, ms).
        sdk_pauses: Per SDK process, its collector pauses (start ns, ms).
    """

    players: array[int]
    volumes: array[int]
    stamps: array[int]
    received: list[tuple[array[int], array[int], array[int], array[int]]]
    sessions_of: dict[int, list[int]]
    sdk_process_of: dict[int, int]
    player_pauses: list[tuple[int, float]]
    sdk_pauses: list[list[tuple[int, float]]]


class _Pauses:
    """Collector pauses of one process, for "did this delivery wait on one?"."""

    def __init__(self, pauses: Sequence[tuple[int, float]]) -> None:
        ordered = sorted(pauses)
        self.starts = [t for t, _ in ordered]
        self.ends = [t + int(ms * 1e6) for t, ms in ordered]
        self.longest = max((e - s for s, e in zip(self.starts, self.ends, strict=True)), default=0)

    def overlaps(self, t0: int, t1: int) -> bool:
        i = bisect_left(self.starts, t0 - self.longest)
        while i < len(self.starts) and self.starts[i] <= t1:
            if self.ends[i] >= t0:
                return True
            i += 1
        return False


def analyse_window(w: Window, *, timeline: bool = False) -> dict[str, Any]:  # noqa: C901 - one pass over the window
    """Latency, loss, the late deliveries' breakdown and (optionally) a 100 ms timeline."""
    received: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for sessions, players, volumes, ats in w.received:
        for s, p, v, t in zip(sessions, players, volumes, ats, strict=True):
            received[s, p, v].append(t)
    for times in received.values():
        times.sort()
    player_gc = _Pauses(w.player_pauses)
    sdk_gc = [_Pauses(p) for p in w.sdk_pauses]
    start = w.stamps[0] if w.stamps else 0
    latencies: list[float] = []
    clean: list[float] = []  # deliveries that overlapped no load-generator pause
    expected = 0
    late = late_all_watchers = late_sdk_gc = late_player_gc = 0
    late_by_process: dict[int, int] = defaultdict(int)
    late_by_second: dict[int, int] = defaultdict(int)
    buckets: dict[int, list[float]] = defaultdict(list)
    for player, volume, t0 in zip(w.players, w.volumes, w.stamps, strict=True):
        watchers = w.sessions_of.get(player, [])
        late_here = delivered_here = 0
        for session in watchers:
            expected += 1
            times = received.get((session, player, volume), [])
            at = bisect_left(times, t0)
            if at == len(times):
                continue
            t1 = times[at]
            ms = (t1 - t0) / 1e6
            delivered_here += 1
            latencies.append(ms)
            process = w.sdk_process_of[session]
            in_sdk_gc = sdk_gc[process].overlaps(t0, t1)
            in_player_gc = player_gc.overlaps(t0, t1)
            if not (in_sdk_gc or in_player_gc):
                clean.append(ms)
            if timeline:
                buckets[(t0 - start) // _BUCKET_NS].append(ms)
            if ms > LATE_MS:
                late += 1
                late_here += 1
                late_by_process[process] += 1
                late_by_second[(t0 - start) // 1_000_000_000] += 1
                late_sdk_gc += in_sdk_gc
                late_player_gc += in_player_gc
        late_all_watchers += late_here > 1 and late_here == delivered_here
    figures: dict[str, Any] = {
        "expected": expected,
        "delivered": len(latencies),
        "lost": expected - len(latencies),
        "latency": latency_summary(latencies),
        "latency_without_load_generator_gc": latency_summary(clean),
        "over_10ms": {
            "late_deliveries": late,
            "changes_with_every_watcher_late": late_all_watchers,
            "during_an_sdk_process_gc_pause": late_sdk_gc,
            "during_the_players_gc_pause": late_player_gc,
            "late_by_sdk_process": dict(sorted(late_by_process.items())),
            "late_by_second": dict(sorted(late_by_second.items())),
        },
        "latency_sets": {
            "player change -> verified state at each watching session": [
                round(x, 3) for x in latencies[:: max(1, len(latencies) // 20000)]
            ]
        },
    }
    if timeline:
        figures["timeline"] = {
            "bucket_s": _BUCKET_NS / 1e9,
            "max_ms": {round(b * _BUCKET_NS / 1e9, 1): round(max(v), 2) for b, v in sorted(buckets.items())},
            "gc_pauses": {
                "players": [(round((t - start) / 1e9, 3), round(ms, 2)) for t, ms in w.player_pauses],
                **{
                    f"sdk-{i}": [(round((t - start) / 1e9, 3), round(ms, 2)) for t, ms in pauses]
                    for i, pauses in enumerate(w.sdk_pauses)
                },
            },
        }
    return figures
