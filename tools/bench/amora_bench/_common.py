"""Shared helpers for the benchmarks: percentiles, process figures, a broker to measure against."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from amora_devtools.broker import BrokerProcess

__all__ = [
    "broker_for_bench",
    "cpu_seconds",
    "latency_summary",
    "machine",
    "percentile",
    "raise_fd_limit",
    "rss_mb",
]


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (``p`` in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """p50/p90/p99/max (ms, 3 decimals) and the sample count."""
    ordered = sorted(samples_ms)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 50), 3),
        "p90_ms": round(percentile(ordered, 90), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
        "max_ms": round(ordered[-1], 3) if ordered else math.nan,
    }


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process (default: this one) in MiB, from /proc."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return math.nan


def cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU seconds used so far by a process (default: this one)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return the new limit.

    Child processes (the broker) inherit it. Raising the hard limit needs CAP_SYS_RESOURCE,
    which this sandbox does not grant: the hard limit caps connections per process.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machine() -> dict[str, Any]:
    """A short description of the machine the figures come from."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


@contextlib.contextmanager
def broker_for_bench() -> Iterator[BrokerProcess]:
    """A fresh Amora-configured mosquitto (TLS, dynamic security) in a temporary folder."""
    from amora_devtools.broker import start_broker  # noqa: PLC0415 - only scenarios with a broker need it
    from amora_devtools.pki import DevPKI  # noqa: PLC0415

    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="amora-bench-") as tmp:
        pki = DevPKI.create(Path(tmp) / "pki")
        broker = start_broker(Path(tmp) / "brokers", pki)
        try:
            yield broker
        finally:
            broker.close()
