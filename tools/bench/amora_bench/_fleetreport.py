"""Summary sections and plots of the fleet scenarios: the main window, the cost curves, the timeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["cost_curve_section", "fleet_plots", "fleet_section", "rate_sweep_section"]

# Targets (issue #15): scenario -> (p99 ms, max ms or None).
_TARGETS: dict[str, tuple[float, float | None]] = {"fleet": (5.0, 50.0), "fleet_10k": (10.0, None)}


def _mark(ok: bool) -> str:  # noqa: FBT001 - a tiny formatter
    return "met" if ok else "**missed**"


def _load(window: dict[str, Any]) -> str:
    load = window.get("load_average", {})
    return f"{load.get('start', '?')}-{load.get('max', '?')}"


def _gc_line(name: str, gc: dict[str, Any]) -> str:
    return (
        f"{name}: {gc['count']} (p99 {gc['p99_ms']} ms, max {gc['max_ms']} ms; "
        f"CPU p99 {gc.get('cpu_p99_ms', '?')} ms, max {gc.get('cpu_max_ms', '?')} ms)"
    )


def fleet_section(name: str, fleet: dict[str, Any]) -> list[str]:
    """The main window of a fleet run: latency, loss, GC pauses, reconcile passes, CPU and memory."""
    lat, clean, procs = fleet["latency"], fleet["latency_without_load_generator_gc"], fleet["processes"]
    p99_target, max_target = _TARGETS.get(name, (10.0, None))
    marks = [f"p99 <= {p99_target:g} ms: {_mark(lat['p99_ms'] <= p99_target)}"]
    if max_target is not None:
        marks.append(f"max <= {max_target:g} ms: {_mark(lat['max_ms'] <= max_target)}")
    marks.append(f"zero loss: {_mark(fleet['lost'] == 0)}")
    late = fleet["over_10ms"]
    sdk_gc = "; ".join(_gc_line(f"SDK process {i}", p["gc"]) for i, p in enumerate(procs["sdk"]))
    full = ", ".join(f"{c['ms']} ms ({c['tracked_objects']:,} objects)" for c in fleet.get("sdk_full_collection", []))
    passes = fleet["reconcile_passes"]
    reconcile = (
        "; ".join(
            f"{p['broker']} ended at {p['ended_at_s']} s, service busy {p['authz_busy_s']} s "
            f"(peak {p['authz_peak_cpu_percent']}% of a core)"
            for p in passes
        )
        or "none in the window"
    )
    sdk = ", ".join(f"{p['cpu_percent']}% / {p['rss_mb']} MiB" for p in procs["sdk"])
    return [
        (
            f"## {name}: {fleet['players']:,} players, {fleet['sessions']:,} SDK sessions "
            f"({fleet['connections']:,} connections), {fleet['achieved_rate_per_s']:,} changes/s "
            f"for {fleet['seconds']:g} s"
        ),
        "",
        "| p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | sent | delivered/expected | lost | load average |",
        "|---|---|---|---|---|---|---|---|",
        (
            f"| {lat['p50_ms']} | {lat['p90_ms']} | {lat['p99_ms']} | {lat['max_ms']} | {fleet['sent']:,} | "
            f"{fleet['delivered']:,}/{fleet['expected']:,} | {fleet['lost']} | {_load(fleet)} |"
        ),
        "",
        f"Player change -> verified state out of each watching session's iterator. {'; '.join(marks)}.",
        "",
        (
            f"Load generators' collector ({fleet['gc_policy']}), pauses in the window, wall (CPU): "
            f"{_gc_line('players', procs['players']['gc'])}; {sdk_gc}. Deliveries that overlapped none of "
            f"them: p99 {clean['p99_ms']} ms, max {clean['max_ms']} ms. Over 10 ms: {late['late_deliveries']:,} "
            f"({late['during_an_sdk_process_gc_pause']:,} during an SDK process's pause, "
            f"{late['during_the_players_gc_pause']:,} during the players'; every watcher of a change late: "
            f"{late['changes_with_every_watcher_late']:,} changes). A full collection in each SDK process with "
            f"all its sessions open (timed after the windows, unfrozen): {full}."
        ),
        "",
        f"Reconcile passes (authz): {reconcile}.",
        "",
        (
            f"CPU (% of one core) / RSS: players {procs['players']['cpu_percent']}% / "
            f"{procs['players']['rss_mb']} MiB; "
            f"SDK processes {sdk}; broker {procs['broker']['cpu_percent']}% / {procs['broker']['rss_mb']} MiB; "
            f"authz {procs['authz']['cpu_percent']}% / {procs['authz']['rss_mb']} MiB. Set-up: register "
            f"{fleet['setup_register_s']} s, players online {fleet['setup_players_online_s']} s, sessions "
            f"{fleet['setup_sessions_s']} s."
        ),
        "",
    ]


def _cpu_cells(window: dict[str, Any]) -> str:
    procs = window["processes"]
    sdk = sum(p["cpu_percent"] for p in procs["sdk"])
    return (
        f"{procs['broker']['cpu_percent']} | {procs['players']['cpu_percent']} | {round(sdk, 1)} | "
        f"{procs['authz']['cpu_percent']}"
    )


def rate_sweep_section(fleet: dict[str, Any]) -> list[str]:
    """The saturation sweep: latency and CPU against the change rate."""
    sweep = fleet.get("rate_sweep")
    if not sweep:
        return []
    lines = [
        f"### Against the change rate ({fleet['connections']:,} connections)",
        "",
        (
            "| changes/s (achieved) | deliveries/s | p50 (ms) | p99 (ms) | max (ms) | lost | CPU % broker | "
            "players | SDK (all) | authz | broker RSS (MiB) | load |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in [fleet, *sweep["points"]]:
        lat = w["latency"]
        per_s = round(w["delivered"] / w["seconds"]) if w["seconds"] else 0
        lines.append(
            f"| {w['rate_per_s']:,.0f} ({w['achieved_rate_per_s']:,}) | {per_s:,} | {lat['p50_ms']} | "
            f"{lat['p99_ms']} | "
            f"{lat['max_ms']} | {w['lost']} | {_cpu_cells(w)} | {w['processes']['broker']['rss_mb']} | {_load(w)} |"
        )
    sat = sweep["saturation"]
    lines += [
        "",
        (
            "Saturation: the highest rate with p99 <= 30 ms and no loss is "
            f"{sat['highest_rate_with_p99_under_30ms']:,} "
            f"changes/s = **{sat['multiple_of_1000']}x** the 1,000 msg/s baseline (first rate over: "
            f"{sat['first_rate_over']})."
        ),
        "",
    ]
    return lines


def cost_curve_section(curve: dict[str, Any]) -> list[str]:
    """Latency, CPU and memory against connections held."""
    lines = [
        (
            f"## Cost curve: {curve['players']:,} players + {curve['sessions']:,} sessions at "
            f"{curve['rate_per_s']:,.0f} changes/s, idle TLS app connections added"
        ),
        "",
        (
            "| connections held | p50 (ms) | p99 (ms) | max (ms) | lost | CPU % broker | players | SDK (all) | authz | "
            "broker RSS (MiB) | load |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in [curve, *curve.get("held_sweep", [])]:
        lat = w["latency"]
        capped = " (capped)" if "capped_by" in w else ""
        lines.append(
            f"| {w['connections']:,}{capped} | {lat['p50_ms']} | {lat['p99_ms']} | {lat['max_ms']} | {w['lost']} | "
            f"{_cpu_cells(w)} | {w['processes']['broker']['rss_mb']} | {_load(w)} |"
        )
    lines += [
        "",
        "CPU in % of one core over the window; RSS at its end. The held connections are the fleet's plus idle ones.",
        "",
    ]
    return lines


def fleet_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Cost curves (connections, rate) and the main fleet window's timeline."""
    written = _curve_plots(results, out)
    fleet = results["scenarios"].get("fleet", {})
    timeline = fleet.get("timeline") if fleet.get("status") == "ok" else None
    if timeline:
        written.append(_timeline_plot(fleet, timeline, out))
    return written


def _curve_plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib.pyplot as plt  # noqa: PLC0415 - plotting is optional for running scenarios

    written: list[Path] = []
    scenarios = results["scenarios"]
    curve = scenarios.get("cost_curve", {})
    fleet = scenarios.get("fleet", {})
    series = []
    if curve.get("status") == "ok":
        series.append(("cost_curve.png", "connections held", [curve, *curve.get("held_sweep", [])], "connections"))
    if fleet.get("status") == "ok" and fleet.get("rate_sweep"):
        series.append(("latency_vs_rate.png", "changes per second", [fleet, *fleet["rate_sweep"]["points"]], "rate"))
    for filename, xlabel, points, key in series:
        xs = [p["connections"] if key == "connections" else p["achieved_rate_per_s"] for p in points]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
        for stat in ("p50_ms", "p99_ms", "max_ms"):
            top.plot(xs, [p["latency"][stat] for p in points], marker="o", label=stat.removesuffix("_ms"))
        top.axhline(30, color="red", linewidth=0.8, linestyle=":", label="30 ms")
        top.set_yscale("log")
        top.set_ylabel("player change -> app (ms)")
        top.legend(fontsize=8)
        top.grid(visible=True, which="both", alpha=0.3)
        for comp in ("broker", "players", "authz"):
            bottom.plot(xs, [p["processes"][comp]["cpu_percent"] for p in points], marker="o", label=comp)
        bottom.plot(
            xs, [sum(s["cpu_percent"] for s in p["processes"]["sdk"]) for p in points], marker="o", label="SDK (all)"
        )
        rss = bottom.twinx()
        rss.plot(xs, [p["processes"]["broker"]["rss_mb"] for p in points], color="grey", linestyle="--", marker="s")
        rss.set_ylabel("broker RSS (MiB, dashed)")
        bottom.set_ylabel("CPU (% of one core)")
        bottom.set_xlabel(xlabel)
        bottom.legend(fontsize=8, loc="upper left")
        bottom.grid(visible=True, alpha=0.3)
        fig.suptitle(f"Cost against {xlabel}")
        fig.tight_layout()
        path = out / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _timeline_plot(fleet: dict[str, Any], timeline: dict[str, Any], out: Path) -> Path:
    import matplotlib.pyplot as plt  # noqa: PLC0415 - plotting is optional for running scenarios

    fig, ax = plt.subplots(figsize=(10, 5))
    buckets = sorted((float(t), v) for t, v in timeline["max_ms"].items())
    ax.plot(
        [t for t, _ in buckets],
        [v for _, v in buckets],
        color="black",
        linewidth=0.8,
        label="max latency per 100 ms",
    )
    ax.set_yscale("log")
    ax.set_xlabel("seconds into the window (changes by send time)")
    ax.set_ylabel("latency (ms)")
    for proc, pauses in sorted(timeline["gc_pauses"].items()):
        if pauses:
            ax.scatter(
                [t for t, _ in pauses],
                [max(ms, 0.01) for _, ms in pauses],
                marker="v",
                s=18,
                label=f"GC pause {proc}",
            )
    for p in fleet.get("reconcile_passes", []):
        ax.axvspan(p["ended_at_s"] - max(p["authz_busy_s"], 0.1), p["ended_at_s"], color="orange", alpha=0.3)
    cpu = ax.twinx()
    for comp, points in timeline.get("cpu", {}).items():
        cpu.plot([t for t, _ in points], [100 * c for _, c in points], linewidth=0.6, alpha=0.7, label=f"{comp} CPU")
    cpu.set_ylabel("CPU (% of one core)")
    cpu.legend(fontsize=7, loc="upper right")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Fleet window: latency, collector pauses, reconcile passes (orange) and CPU on one time axis")
    ax.grid(visible=True, alpha=0.3)
    fig.tight_layout()
    path = out / "fleet_timeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
