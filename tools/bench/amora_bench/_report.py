"""Turn benchmark results into PNG plots and a Markdown summary with the targets marked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amora_bench._fleetreport import cost_curve_section, fleet_plots, fleet_section, rate_sweep_section

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["summary_markdown", "write_plots"]


def _latency_sets(results: dict[str, Any]) -> dict[str, list[float]]:
    """Every latency sample list in the results, by a label."""
    sets: dict[str, list[float]] = {}
    for name, figures in results["scenarios"].items():
        for level in figures.get("levels", []):
            samples = level.get("latency", {}).get("samples_ms")
            if samples:
                sets[f"{name}: broker pub->sub with {level['connections']:,} conns held"] = samples
        for path, block in figures.get("latency_sets", {}).items():
            if block:
                sets[f"{name}: {path}"] = block
    return sets


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Write the plots that the results allow; return their paths."""
    import matplotlib as mpl  # noqa: PLC0415 - plotting is optional for running scenarios

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written: list[Path] = []
    sets = _latency_sets(results)
    if sets:
        fig, ax = plt.subplots(figsize=(9, 5))
        for label, samples in sets.items():
            ordered = sorted(samples)
            n = len(ordered)
            ax.plot(ordered, [(i + 1) / n for i in range(n)], label=f"{label} (n={n:,})")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of messages (CDF)")
        ax.set_title(f"Latency distribution ({results['mode']} run)")
        ax.grid(visible=True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        path = out / "latency_distribution.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    written += fleet_plots(results, out)
    levels = results["scenarios"].get("connections", {}).get("levels", [])
    if levels:
        counts = [lv["connections"] for lv in levels]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
            ax.plot(counts, [lv["latency"][key] for lv in levels], marker="o", label=f"pub->sub {label}")
        ax.set_xlabel("concurrent TLS connections held")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax2 = ax.twinx()
        ax2.plot(counts, [lv["broker_rss_mb"] for lv in levels], color="grey", linestyle="--", marker="s")
        ax2.set_ylabel("broker RSS (MiB, dashed)")
        ax.set_title("Latency and broker memory against connection count")
        ax.grid(visible=True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        path = out / "latency_vs_connections.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _mark(ok: bool) -> str:  # noqa: FBT001 - a tiny formatter
    return "met" if ok else "**missed**"


def _envelope_section(scenarios: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    env = scenarios.get("envelope")
    if env and env["status"] == "ok":
        ops = env["ops_per_s"]
        lines += [
            "## Envelope (sign+encode, decode+verify)",
            "",
            "| path | ours/s | bare Ed25519/s | JWS/s | x floor (<= 1.3) | x JWS (>= 1.5) |",
            "|---|---|---|---|---|---|",
            (
                f"| sign+encode | {ops['ours_encode']:,} | {ops['floor_sign']:,} | {ops['jws_encode']:,} | "
                f"{env['encode_vs_floor']} ({_mark(env['encode_vs_floor'] <= 1.3)}) | "
                f"{env['encode_speedup_vs_jws']} ({_mark(env['encode_speedup_vs_jws'] >= 1.5)}) |"
            ),
            (
                f"| decode+verify | {ops['ours_decode']:,} | {ops['floor_verify']:,} | {ops['jws_decode']:,} | "
                f"{env['decode_vs_floor']} ({_mark(env['decode_vs_floor'] <= 1.3)}) | "
                f"{env['decode_speedup_vs_jws']} ({_mark(env['decode_speedup_vs_jws'] >= 1.5)}) |"
            ),
            "",
            (
                f"The bare-Ed25519 floor itself is only {env['floor_speedup_vs_jws_encode']}x / "
                f"{env['floor_speedup_vs_jws_decode']}x faster than JWS: no Ed25519 envelope can beat JWS by more."
            ),
            "",
        ]
    return lines


def _connections_section(scenarios: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    conns = scenarios.get("connections")
    if conns and conns["status"] == "ok":
        lines += [
            "## Connections (TLS, held; then a broker restart)",
            "",
            (
                "| conns | connect all (s) | connect p99 (ms) | broker RSS (MiB) | client KiB/conn "
                "| pub->sub p50/p99 (ms) | storm: all back (s) |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for lv in conns["levels"]:
            note = " (capped)" if "capped_by" in lv else ""
            lines.append(
                f"| {lv['connections']:,}{note} | {lv['connect_all_s']} | {lv['connect']['p99_ms']} | "
                f"{lv['broker_rss_mb']} | {lv['client_rss_per_conn_kb']} | "
                f"{lv['latency']['p50_ms']}/{lv['latency']['p99_ms']} | {lv['storm']['all_back_s']} |"
            )
        for lv in conns["levels"]:
            if lv["connections"] >= 10_000:
                lines.append(
                    f"\nReconnect storm at {lv['connections']:,}: {lv['storm']['all_back_s']} s "
                    f"(target <= 30 s: {_mark(lv['storm']['all_back_s'] <= 30)})."
                )
            if "capped_by" in lv:
                lines.append(f"\n{lv['requested']:,} requested, {lv['connections']:,} run: {lv['capped_by']}.")
        lines.append("")
    return lines


def _sdk_section(scenarios: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    sdk = scenarios.get("sdk_latency")
    if sdk and sdk["status"] == "ok":
        lines += [
            f"## SDK latency (device publish -> verified state from the iterator, {sdk['rate_per_s']:.0f} msg/s)",
            "",
            "| subscriber | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | delivered/expected |",
            "|---|---|---|---|---|---|",
        ]
        for kind, c in sdk["clients"].items():
            lines.append(
                f"| {kind} | {c['p50_ms']} | {c['p90_ms']} | {c['p99_ms']} | {c['max_ms']} | "
                f"{c['count']}/{c['expected']} |"
            )
        if "sdk_p50_over_gmqtt_p50" in sdk:
            lines.append(
                f"\nSDK p50 / bare gmqtt p50 = {sdk['sdk_p50_over_gmqtt_p50']} "
                f"(target <= 2: {_mark(sdk['target_p50_within_2x'])}); "
                f"SDK p99 < 10 ms: {_mark(sdk['target_p99_under_10ms'])}."
            )
        lines.append("")
    return lines


def _agent_section(scenarios: dict[str, Any]) -> list[str]:
    agent = scenarios.get("agent_latency")
    if not agent or agent["status"] != "ok":
        return []
    floor, ours = agent["floor_mpd_idle"], agent["agent_state_on_broker"]
    return [
        f"## MPD event -> signed state on the broker ({agent['events']} pause/resume events)",
        "",
        "| path | p50 (ms) | p99 (ms) |",
        "|---|---|---|",
        f"| bare MPD idle client (floor) | {floor['p50_ms']} | {floor['p99_ms']} |",
        f"| agent -> broker -> app | {ours['p50_ms']} | {ours['p99_ms']} |",
        "",
        f"Events over 10 ms: {len(agent['agent_over_10ms'])}.",
        "",
    ]


def _revocation_section(scenarios: dict[str, Any]) -> list[str]:
    rev = scenarios.get("revocation")
    if not rev or rev["status"] != "ok":
        return []
    cut = rev["cut"]
    return [
        f"## Revocation: unlink API call -> subscription cut ({rev['rounds']} rounds)",
        "",
        (
            f"p50 {cut['p50_ms']} ms, p99 {cut['p99_ms']} ms, max {cut['max_ms']} ms "
            f"(target p99 < 1 s: {_mark(rev['target_p99_under_1s'])}); the re-subscription was refused in "
            f"{rev['resubscribe_refused']}/{rev['rounds']} rounds."
        ),
        "",
    ]


_SECTIONED = {
    "envelope",
    "connections",
    "sdk_latency",
    "agent_latency",
    "fleet",
    "fleet_10k",
    "cost_curve",
    "revocation",
}


def summary_markdown(results: dict[str, Any]) -> str:
    """A short Markdown report: machine, each scenario's key figures, targets met or missed."""
    m = results["machine"]
    lines = [
        f"# Amora benchmarks — {results['mode']} run, {results['started_at']}",
        "",
        (
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, "
            f"kernel {m['kernel']}, open-file limit {m['open_files_limit']}."
        ),
        "",
    ]
    scenarios = results["scenarios"]
    lines += _envelope_section(scenarios)
    lines += _connections_section(scenarios)
    lines += _sdk_section(scenarios)
    lines += _agent_section(scenarios)
    for name in ("fleet", "fleet_10k"):
        if scenarios.get(name, {}).get("status") == "ok":
            lines += fleet_section(name, scenarios[name])
            lines += rate_sweep_section(scenarios[name])
    if scenarios.get("cost_curve", {}).get("status") == "ok":
        lines += cost_curve_section(scenarios["cost_curve"])
    lines += _revocation_section(scenarios)
    for name, figures in scenarios.items():
        if figures["status"] != "ok":
            lines += [f"## {name}: {figures['status']}", "", f"{figures.get('error', '')}", ""]
        elif name not in _SECTIONED and "summary" in figures:
            lines += [f"## {name}", "", figures["summary"], ""]
    durations = ", ".join(
        f"{n} {f['duration_s']} s (load {f['load_average_1m']['before']}-{f['load_average_1m']['after']})"
        if "load_average_1m" in f
        else f"{n} {f['duration_s']} s"
        for n, f in scenarios.items()
    )
    lines += [f"Durations: {durations}.", ""]
    return "\n".join(lines)
