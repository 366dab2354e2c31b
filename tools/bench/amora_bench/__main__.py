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
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from amora_bench._common import machine
from amora_bench._report import summary_markdown, write_plots

# Scenario name -> (module, quick kwargs, full kwargs). A module's `run(**kwargs)` returns its figures.
SCENARIOS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
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
    "garbage": ("amora_bench.garbage", {"sessions": 50, "seconds": 2.0}, {"sessions": 1000, "seconds": 5.0}),
    "fleet": (
        "amora_bench.fleet",
        {"players": 140, "sessions": 500, "rate": 1000.0, "seconds": 5.0},
        {"players": 1400, "sessions": 5000, "rate": 1000.0, "seconds": 30.0},
    ),
}


def run_all(mode: str, only: set[str] | None) -> dict[str, Any]:
    """Run the chosen scenarios in ``mode`` and collect their figures."""
    results: dict[str, Any] = {"mode": mode, "machine": machine(), "started_at": time.strftime("%FT%TZ", time.gmtime())}
    scenarios: dict[str, Any] = {}
    for name, (module_name, quick_kwargs, full_kwargs) in SCENARIOS.items():
        if only and name not in only:
            continue
        sys.stderr.write(f"amora-bench: {name} ({mode}) ...\n")
        start = time.perf_counter()
        try:
            module = importlib.import_module(module_name)
            figures = module.run(**(quick_kwargs if mode == "quick" else full_kwargs))
            figures["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - one failing scenario must not hide the others
            traceback.print_exc()
            figures = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        figures["duration_s"] = round(time.perf_counter() - start, 1)
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
