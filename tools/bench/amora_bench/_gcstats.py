"""Garbage-collector pauses of one process, timed through `gc.callbacks`, and the GC policy of a window.

The load generators of a benchmark (one process holding thousands of SDK sessions or simulated
players) are not what a product deployment looks like: an app holds one session. Their cyclic
collections are timed here and reported on their own, so that the harness's pauses and the
product's latency are not mixed.
"""

from __future__ import annotations

import collections
import gc
import time
from typing import Any, Literal

from amora_bench._common import percentile

__all__ = ["GcPolicy", "GcRecorder", "full_collection", "kind_of", "window_policy"]

GcPolicy = Literal["enabled", "frozen", "off"]
"""How a load generator's collector runs during the timed window.

``enabled``: as Python starts (thresholds 700/10/10, nothing frozen) — what an app gets by default.
``frozen``: everything alive at the end of set-up moved out of the collector's reach (`gc.freeze`),
collector on: what a long-running service does after start-up. ``off``: frozen, and the collector
disabled for the window (re-enabled afterwards; what the window made is collected and counted then).
"""


class GcRecorder:
    """Times each collection of this process: generation, start (monotonic ns) and duration.

    With ``census=True`` it also counts, at the start of each collection, the young objects
    (generation 0) by kind: what set the collector off. That takes time of its own (not in
    the pauses recorded): for diagnosis, not for latency windows.
    """

    def __init__(self, *, census: bool = False) -> None:
        """Create a recorder; it records between `start` and `stop`."""
        self.pauses: list[tuple[int, int, float]] = []  # (generation, start_ns, wall ms)
        self.cpu_ms: list[float] = []  # the same pauses' CPU time (less when the process was descheduled)
        self.young: list[int] = []  # with census: generation 0's size at each collection
        self.young_kinds: collections.Counter[str] = collections.Counter()
        self._census = census
        self._began = 0
        self._began_cpu = 0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            if self._census:
                young = gc.get_objects(0)
                self.young.append(len(young))
                self.young_kinds.update(kind_of(o) for o in young)
                del young
            self._began = time.perf_counter_ns()
            self._began_cpu = time.thread_time_ns()
        elif self._began:
            self.pauses.append((int(info["generation"]), self._began, (time.perf_counter_ns() - self._began) / 1e6))
            self.cpu_ms.append((time.thread_time_ns() - self._began_cpu) / 1e6)
            self._began = 0

    def start(self) -> None:
        """Begin recording."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        """Stop recording (what was recorded stays)."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def summary(self, since_ns: int = 0, until_ns: int | None = None) -> dict[str, Any]:
        """Count, p50, p99, max and total (ms) of the pauses in a time range, overall and per generation."""
        picked = [
            (g, ms, cpu)
            for (g, t, ms), cpu in zip(self.pauses, self.cpu_ms, strict=True)
            if t >= since_ns and (until_ns is None or t <= until_ns)
        ]
        chosen = [(g, ms) for g, ms, _ in picked]
        result = _stats([ms for _, ms in chosen])
        cpu = sorted(c for _, _, c in picked)
        result["cpu_p99_ms"] = round(percentile(cpu, 99), 3) if cpu else 0.0
        result["cpu_max_ms"] = round(cpu[-1], 3) if cpu else 0.0
        result["by_generation"] = {
            str(gen): _stats([ms for g, ms in chosen if g == gen]) for gen in sorted({g for g, _ in chosen})
        }
        return result


def kind_of(o: object) -> str:
    """A tracked object's type; for coroutines and bound methods the code they run, for tuples what they start with."""
    kind = type(o).__qualname__
    if kind == "coroutine":
        return f"coroutine {getattr(o, '__qualname__', '?')}"
    if kind == "method":
        return f"method {getattr(getattr(o, '__func__', None), '__qualname__', '?')}"
    if isinstance(o, tuple) and o:  # scheduled callbacks' arguments, packets, records
        return f"{kind} of {type(o[0]).__qualname__}"
    return kind


def _stats(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 50), 3) if ordered else 0.0,
        "p99_ms": round(percentile(ordered, 99), 3) if ordered else 0.0,
        "max_ms": round(ordered[-1], 3) if ordered else 0.0,
        "total_ms": round(sum(ordered), 1),
    }


def full_collection() -> dict[str, Any]:
    """Time one full collection now: the worst pause this process's live objects cost."""
    tracked = len(gc.get_objects())
    start = time.perf_counter_ns()
    unreachable = gc.collect()
    return {
        "ms": round((time.perf_counter_ns() - start) / 1e6, 2),
        "tracked_objects": tracked,
        "unreachable": unreachable,
    }


def window_policy(policy: GcPolicy, *, collect: bool = True) -> None:
    """Apply ``policy`` at the start of a timed window (after set-up).

    ``collect=False`` freezes without collecting first (the garbage of set-up is frozen too):
    for processes that a long collection would disturb.
    """
    if policy == "enabled":
        return
    if collect:
        gc.collect()
    gc.freeze()
    if policy == "off":
        gc.disable()
