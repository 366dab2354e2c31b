"""A sampler thread: CPU of every component at 100 ms, the load average, and the authz service's reconcile passes.

Everything is stamped with CLOCK_MONOTONIC (``time.perf_counter_ns``, system-wide on Linux), the
clock the fleet's deliveries are timed with, so a late delivery, a collector pause, a CPU burst
and a reconcile pass can be laid on one time axis.

Reconcile passes: the authz service reports when each broker's last full pass finished
(``last_full_reconcile_ms`` in ``/readyz``), polled every second; its duration is read from the
service's CPU: the run of busy samples (over a quarter of a core) that ends at the pass.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from typing import Any

from amora_bench._common import cpu_seconds

__all__ = ["Monitor"]

_INTERVAL_S = 0.1
_BUSY_CPU = 0.25  # share of one core above which the authz service counts as busy


class Monitor:
    """Samples the given processes' CPU every 100 ms until stopped.

    Args:
        pids: Component name -> process id.
        authz_url: The authz service, polled for reconcile passes (None: not polled).
    """

    def __init__(self, pids: dict[str, int], *, authz_url: str | None = None) -> None:
        """Create the monitor (`start` begins sampling)."""
        self.pids = dict(pids)
        self.authz_url = authz_url
        self.samples: list[tuple[int, dict[str, float]]] = []  # (t_ns, name -> CPU seconds so far)
        self.load: list[tuple[int, float]] = []
        self.pass_ends: dict[str, set[int]] = {}  # broker -> wall-clock ms of finished full passes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="amora-bench.monitor", daemon=True)
        self._wall_offset_ns = time.time_ns() - time.perf_counter_ns()

    def start(self) -> None:
        """Begin sampling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        client: Any = None
        if self.authz_url is not None:
            import httpx  # noqa: PLC0415

            client = httpx.Client(base_url=self.authz_url, timeout=2)
        next_poll = 0.0
        try:
            while not self._stop.wait(_INTERVAL_S):
                now = time.perf_counter_ns()
                cpu: dict[str, float] = {}
                for name, pid in self.pids.items():
                    with contextlib.suppress(OSError, IndexError, ValueError):
                        cpu[name] = cpu_seconds(pid)
                self.samples.append((now, cpu))
                self.load.append((now, os.getloadavg()[0]))
                if client is not None and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + 1.0
                    self._poll(client)
        finally:
            if client is not None:
                client.close()

    def _poll(self, client: Any) -> None:  # noqa: ANN401 - an httpx.Client
        try:
            brokers = client.get("/readyz").json().get("brokers", {})
        except Exception:  # noqa: BLE001 - a missed poll only loses one point of the timeline
            return
        for name, status in brokers.items():
            ended = status.get("last_full_reconcile_ms")
            if isinstance(ended, int):
                self.pass_ends.setdefault(name, set()).add(ended)

    def to_monotonic_ns(self, wall_ms: int) -> int:
        """A wall-clock instant (ms since the epoch) on the monotonic axis."""
        return wall_ms * 1_000_000 - self._wall_offset_ns

    def cpu_series(self, t0: int, t1: int) -> dict[str, list[tuple[float, float]]]:
        """Per component: (seconds since ``t0``, share of a core) for each 100 ms step in [t0, t1]."""
        series: dict[str, list[tuple[float, float]]] = {name: [] for name in self.pids}
        chosen = [s for s in self.samples if t0 <= s[0] <= t1]
        for (ta, a), (tb, b) in itertools.pairwise(chosen):
            dt = (tb - ta) / 1e9
            for name in self.pids:
                if name in a and name in b and dt > 0:
                    series[name].append((round((tb - t0) / 1e9, 2), round((b[name] - a[name]) / dt, 3)))
        return series

    def cpu_percent(self, t0: int, t1: int) -> dict[str, float]:
        """Average CPU per component over [t0, t1], percent of one core."""
        chosen = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(chosen) < 2:  # a rate needs two samples
            return {}
        (ta, a), (tb, b) = chosen[0], chosen[-1]
        dt = (tb - ta) / 1e9
        return {n: round(100 * (b[n] - a[n]) / dt, 1) for n in self.pids if n in a and n in b}

    def load_average(self, t0: int, t1: int) -> dict[str, float]:
        """The 1-minute load average at the start and end of [t0, t1] and its maximum."""
        chosen = [v for t, v in self.load if t0 <= t <= t1] or [os.getloadavg()[0]]
        return {"start": round(chosen[0], 2), "end": round(chosen[-1], 2), "max": round(max(chosen), 2)}

    def reconcile_passes(self, t0: int, t1: int) -> list[dict[str, Any]]:
        """Full reconcile passes that ended in [t0, t1].

        Returns:
            Per pass: the broker, when it ended (s since ``t0``), and how long the service was busy before.
        """
        authz = self.cpu_series(t0 - 30 * 1_000_000_000, t1).get("authz", [])
        shift = 30.0  # the series starts 30 s before t0, to see a pass that began earlier
        passes = []
        for broker, ends in sorted(self.pass_ends.items()):
            for wall_ms in sorted(ends):
                at = self.to_monotonic_ns(wall_ms)
                if not t0 <= at <= t1:
                    continue
                end_s = (at - t0) / 1e9
                busy = [(t - shift, c) for t, c in authz if t - shift <= end_s + _INTERVAL_S]
                run = 0
                peak = 0.0
                for _, c in reversed(busy):
                    if c < _BUSY_CPU:
                        if run:
                            break
                        continue
                    run += 1
                    peak = max(peak, c)
                passes.append(
                    {
                        "broker": broker,
                        "ended_at_s": round(end_s, 2),
                        "authz_busy_s": round(run * _INTERVAL_S, 1),
                        "authz_peak_cpu_percent": round(100 * peak),
                    }
                )
        return passes
