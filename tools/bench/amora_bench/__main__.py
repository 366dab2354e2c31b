"""Run the benchmark scenarios and write results.json, PNG plots and a Markdown summary.

    python -m amora_bench quick --out DIR      # every scenario's quick mode (< 2 minutes in all)
    python -m amora_bench full  --out DIR      # the full modes
    python -m amora_bench quick --out DIR --only envelope,connections

Each scenario measures its baselines in the same run and reports ratios against them; targets
are read from the results (the summary marks them), never asserted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from amora_bench._common import machine
from amora_bench._report import summary_markdown, write_plots

# Scenario name -> (module, quick kwargs, full kwargs). A module's `run(**kwargs)` returns its figures;
# quick kwargs None: the scenario runs in full mode only.
SCENARIOS: dict[str, tuple[str, dict[str, Any] | None, dict[str, Any]]] = {
    "envelope": ("amora_bench.envelope", {"seconds": 0.5}, {"seconds": 3.0}),
    "connections": (
        "amora_bench.connections",
        {"counts": [1000], "hold_s": 3.0},
        {"counts": [10_000, 20_000], "hold_s": 60.0},
    ),
    "sdk_latency": ("amora_bench.sdk_latency", {"seconds": 2.0}, {"seconds": 10.0}),
    "agent_latency": ("amora_bench.agent_latency", {"events": 100}, {"events": 1000}),
    "revocation": ("amora_bench.revocation", {"rounds": 20}, {"rounds": 200}),
    "failover": ("amora_bench.failover", {"rounds": 1}, {"rounds": 3}),
    "device_revocation": ("amora_bench.device_revocation", {"rounds": 20}, {"rounds": 200}),
    "backend_consumer": ("amora_bench.backend_consumer", {"count": 2000}, {"count": 20_000}),
    "garbage": (
        "amora_bench.garbage",
        {"sessions": 50, "agents": 10, "seconds": 2.0},
        {"sessions": 1000, "agents": 200, "seconds": 5.0},
    ),
    "fleet": (
        "amora_bench.fleet",
        {
            "players": 140,
            "sessions": 500,
            "rate": 1000.0,
            "seconds": 5.0,
            "rates": [2000.0, 4000.0],
            "rate_seconds": 3.0,
        },
        {
            "players": 1400,
            "sessions": 5000,
            "rate": 1000.0,
            "seconds": 30.0,
            "rates": [1500.0, 2000.0, 2500.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0],
            "rate_seconds": 10.0,
        },
    ),
    # The 10,000-connection fleet, full mode only. Its 8,000 sessions log in in token mode
    # (ADR 0015): 8,000 dynsec logins took over 30 minutes of set-up on a loaded machine.
    "fleet_10k": (
        "amora_bench.fleet",
        None,
        {"players": 2000, "sessions": 8000, "rate": 1000.0, "seconds": 30.0, "credentials": "token"},
    ),
    # Latency, CPU and memory against connections held: a 1,000-connection fleet at 1,000
    # changes/s, then idle TLS app connections added up to each level.
    "cost_curve": (
        "amora_bench.fleet",
        None,  # full only: quick mode stays under two minutes (python -m amora_bench.fleet --held 1000,2700 to try it)
        {"players": 200, "sessions": 800, "seconds": 10.0, "held": [2700, 6400, 10_000, 20_000], "held_seconds": 10.0},
    ),
    # Restart storm, first logins, reconcile cost (issue #15 items 3 and 4; amora_bench.logins).
    "logins": (
        "amora_bench.logins",
        {"apps": 200, "known": 500, "live": 500, "seconds": 2.0, "sessions": [500], "options": False},
        {"apps": 5000, "known": 5000, "live": 10_000, "seconds": 10.0, "sessions": [5000, 10_000]},
    ),
}


def run_all(mode: str, only: set[str] | None) -> dict[str, Any]:
    """Run the chosen scenarios in ``mode`` and collect their figures."""
    results: dict[str, Any] = {"mode": mode, "machine": machine(), "started_at": time.strftime("%FT%TZ", time.gmtime())}
    scenarios: dict[str, Any] = {}
    for name, (module_name, quick_kwargs, full_kwargs) in SCENARIOS.items():
        kwargs = quick_kwargs if mode == "quick" else full_kwargs
        if (only and name not in only) or kwargs is None:
            continue
        sys.stderr.write(f"amora-bench: {name} ({mode}) ...\n")
        start = time.perf_counter()
        load_before = os.getloadavg()[0]
        try:
            module = importlib.import_module(module_name)
            figures = module.run(**kwargs)
            figures["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - one failing scenario must not hide the others
            traceback.print_exc()
            figures = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        figures["duration_s"] = round(time.perf_counter() - start, 1)
        # The machine may be shared: the 1-minute load average before and after, beside every figure.
        figures["load_average_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
        scenarios[name] = figures
        sys.stderr.write(f"amora-bench: {name} done in {figures['duration_s']} s ({figures['status']})\n")
    results["scenarios"] = scenarios
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="amora-bench", description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", choices=["quick", "full"])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, plots and summary.md")
    parser.add_argument("--only", help="comma-separated scenario names (default: all)")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    if only and not only <= SCENARIOS.keys():
        parser.error(f"unknown scenarios: {sorted(only - SCENARIOS.keys())}; known: {sorted(SCENARIOS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = run_all(args.mode, only)
    plots = write_plots(results, args.out)
    results["plots"] = [p.name for p in plots]
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summary = summary_markdown(results)
    (args.out / "summary.md").write_text(summary)
    sys.stdout.write(summary)
    return 0 if all(s["status"] == "ok" for s in results["scenarios"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
