"""The fleet benchmark's bookkeeping: matching changes to deliveries, late ones and collector pauses."""

from __future__ import annotations

import gc
from array import array

from amora_bench._fleetanalysis import Window, analyse_window
from amora_bench._gcstats import GcRecorder, kind_of

MS = 1_000_000


def _columns(rows: list[tuple[int, int, int, int]]) -> tuple[array[int], array[int], array[int], array[int]]:
    cols = (array("q"), array("q"), array("q"), array("q"))
    for row in rows:
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


def test_changes_are_matched_to_each_watcher_and_late_ones_explained() -> None:
    # Player 0 is watched by sessions 0 (process 0) and 2 (process 1); player 1 by session 1.
    t = 1_000 * MS
    window = Window(
        players=array("q", [0, 1, 0]),
        volumes=array("q", [1, 1, 2]),
        stamps=array("q", [t, t + 1 * MS, t + 100 * MS]),
        received=[
            _columns([(0, 0, 1, t + 2 * MS), (0, 0, 2, t + 101 * MS)]),
            # Session 2 got change 1 only 30 ms late, during its process's 25 ms pause; an older
            # receipt of volume 1 (before the change) must not count. Session 1 got nothing.
            _columns([(2, 0, 1, t - 5 * MS), (2, 0, 1, t + 30 * MS), (2, 0, 2, t + 102 * MS)]),
        ],
        sessions_of={0: [0, 2], 1: [1]},
        sdk_process_of={0: 0, 1: 1, 2: 1},
        player_pauses=[],
        sdk_pauses=[[], [(t + 4 * MS, 25.0)]],
    )
    figures = analyse_window(window, timeline=True)
    assert (figures["expected"], figures["delivered"], figures["lost"]) == (5, 4, 1)
    assert figures["latency"]["max_ms"] == 30.0
    assert figures["latency_without_load_generator_gc"]["count"] == 3
    late = figures["over_10ms"]
    assert late["late_deliveries"] == 1
    assert late["during_an_sdk_process_gc_pause"] == 1
    assert late["during_the_players_gc_pause"] == 0
    assert late["late_by_sdk_process"] == {1: 1}
    assert late["changes_with_every_watcher_late"] == 0
    assert figures["timeline"]["gc_pauses"]["sdk-1"] == [(0.004, 25.0)]


def test_the_recorder_times_each_collection_by_generation() -> None:
    recorder = GcRecorder()
    recorder.start()
    try:
        gc.collect(0)
        gc.collect()
    finally:
        recorder.stop()
    summary = recorder.summary()
    assert summary["count"] >= 2
    assert summary["by_generation"]["0"]["count"] >= 1
    assert summary["by_generation"]["2"]["count"] >= 1
    assert summary["max_ms"] > 0
    gc.collect()
    assert recorder.summary()["count"] == summary["count"]  # stopped: nothing more recorded


def test_the_census_counts_what_each_collection_found_young_by_kind() -> None:
    class Marker:
        pass

    async def waiting() -> None:
        return None

    gc.collect()
    recorder = GcRecorder(census=True)
    young = [Marker() for _ in range(50)]
    coroutine = waiting()
    recorder.start()
    try:
        gc.collect(0)
    finally:
        recorder.stop()
        coroutine.close()
    assert len(recorder.young) == 1
    assert recorder.young[0] >= 51
    assert recorder.young_kinds[Marker.__qualname__] == len(young)
    assert recorder.young_kinds[f"coroutine {waiting.__qualname__}"] == 1
    assert kind_of((1.5, "x")) == "tuple of float"
    assert kind_of(recorder.start) == "method GcRecorder.start"
