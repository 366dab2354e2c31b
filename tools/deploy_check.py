"""Offline checks of the deployment templates (``hatch run templates:check``, part of ``tools/dev test``).

1. ``kubectl kustomize`` renders every overlay under ``infra/k8s/overlays``;
2. ``kubernetes-validate --strict`` validates each rendered manifest against the Kubernetes
   schemas (custom resources such as the Key Vault CSI driver's SecretProviderClass have no
   bundled schema: reported, not failed);
3. ``checkov`` runs its security checks on the Bicep templates (``infra/azure``) and on each
   rendered overlay. Skipped checks are only those skipped inline, each with its reason
   (``checkov:skip=`` in Bicep, ``checkov.io/skip*`` annotations in Kubernetes);
4. the monitoring (``infra/azure/modules/monitoring.bicep``, ``monitoring-workbook.json``): the
   workbook is a workbook (``Notebook/1.0``, every item a query or text), every alert the
   operators were promised is there, and every metric and span name the queries use is one
   that docs/observability.md lists (a renamed instrument would otherwise leave an alert
   that never fires).

No Azure account and no cluster are needed. Exit status 0 when everything passes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.31.0"  # AKS's oldest generally available minor version at the time of writing


def _run(argv: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, cwd=cwd)  # noqa: S603 - tools found by _tool


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        sys.exit(f"deploy-check: {name} not found (tools/dev installs it; the hatch env 'templates' has checkov)")
    return found


def render_overlays(out: Path) -> list[Path]:
    """Render each overlay with ``kubectl kustomize``; return the files written."""
    kubectl = _tool("kubectl")
    rendered = []
    for overlay in sorted((ROOT / "infra/k8s/overlays").iterdir()):
        result = _run([kubectl, "kustomize", str(overlay)])
        if result.returncode != 0:
            sys.exit(f"deploy-check: kubectl kustomize {overlay.relative_to(ROOT)} failed:\n{result.stderr}")
        target = out / f"k8s-{overlay.name}.yaml"
        target.write_text(result.stdout)
        kinds = sum(1 for line in result.stdout.splitlines() if line.startswith("kind:"))
        sys.stdout.write(f"kustomize {overlay.relative_to(ROOT)}: {kinds} resources\n")
        rendered.append(target)
    return rendered


def validate(files: list[Path]) -> bool:
    """``kubernetes-validate --strict`` on each file; True when nothing failed."""
    ok = True
    for path in files:
        result = _run([_tool("kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, str(path)])
        output = (result.stdout + result.stderr).strip()
        passed = result.returncode == 0
        ok &= passed
        lines = [line for line in output.splitlines() if not line.startswith("WARNING: Location")]
        verdict = "ok" if passed else "FAILED"
        sys.stdout.write(f"kubernetes-validate {path.name} (Kubernetes {K8S_VERSION}): {verdict}\n")
        for line in lines:
            sys.stdout.write(f"  {line}\n")
    return ok


def checkov(label: str, args: list[str]) -> bool:
    """Run checkov; print passed/failed/skipped and every failure and skip reason."""
    # --skip-download: no guideline lookups on the internet (offline, and 3 minutes of retries).
    result = _run([_tool("checkov"), "--skip-download", "--compact", "--output", "json", *args], cwd=ROOT)
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        sys.stdout.write(f"checkov {label}: no report\n{result.stdout[-3000:]}{result.stderr[-3000:]}\n")
        return False
    reports = reports if isinstance(reports, list) else [reports]
    ok = True
    for report in reports:
        summary = report.get("summary", {})
        failed = report.get("results", {}).get("failed_checks", [])
        skipped = report.get("results", {}).get("skipped_checks", [])
        errors = summary.get("parsing_errors", 0)
        sys.stdout.write(
            f"checkov {label} [{report.get('check_type')}]: {summary.get('passed', 0)} passed, "
            f"{summary.get('failed', 0)} failed, {summary.get('skipped', 0)} skipped (with reasons), "
            f"{errors} parsing errors\n"
        )
        for check in failed:
            where = f"{check['resource']} ({check['file_path']})"
            sys.stdout.write(f"  FAILED {check['check_id']} {where}: {check['check_name']}\n")
        for check in skipped:
            reason = (check.get("check_result") or {}).get("suppress_comment", "")
            sys.stdout.write(f"  skipped {check['check_id']} {check['resource']}: {reason}\n")
        ok &= not failed and not errors
    return ok


MONITORING = ROOT / "infra/azure/modules/monitoring.bicep"
WORKBOOK = ROOT / "infra/azure/monitoring-workbook.json"
OBSERVABILITY = ROOT / "docs/observability.md"
ALERTS = (
    "broker-down",
    "standby-lag",
    "agent-disconnect-rate",
    "command-failure-rate",
    "command-latency-p99",
    "session-refusal-spike",
)
_NAME = re.compile(r"amora_[a-z0-9_]+|amora\.[a-z]+ [a-z]+")


def check_monitoring() -> bool:
    """The workbook's shape, the promised alerts, and only documented names in the queries."""
    problems: list[str] = []
    workbook = json.loads(WORKBOOK.read_text())
    if workbook.get("version") != "Notebook/1.0":
        problems.append(f"{WORKBOOK.name}: version is {workbook.get('version')!r}, not 'Notebook/1.0'")
    queries = [item["content"]["query"] for item in workbook.get("items", []) if item.get("type") == 3]
    if any(item.get("type") not in {1, 3} for item in workbook.get("items", [])) or not queries:
        problems.append(f"{WORKBOOK.name}: items must be text (1) or queries (3), with at least one query")
    bicep = MONITORING.read_text()
    problems += [f"{MONITORING.name}: no alert {name!r}" for name in ALERTS if f"name: '{name}'" not in bicep]
    documented = set(re.findall(r"`(amora[._][a-z0-9_. ]+?)`", OBSERVABILITY.read_text()))
    used = set(_NAME.findall(bicep)) | {name for query in queries for name in _NAME.findall(query)}
    problems += [
        f"{name!r} is used by the monitoring but not in {OBSERVABILITY.name}" for name in sorted(used - documented)
    ]
    for problem in problems:
        sys.stdout.write(f"  FAILED {problem}\n")
    sys.stdout.write(
        f"monitoring: {len(queries)} workbook queries, {len(ALERTS)} alerts, {len(used)} metric and span names: "
        + ("ok\n" if not problems else "FAILED\n")
    )
    return not problems


def main() -> int:
    """Run every check; return 0 when all pass."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", metavar="DIR", help="write the rendered overlays to DIR")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        files = render_overlays(out)
        ok = validate(files)
        ok &= checkov("infra/azure", ["--framework", "bicep", "-d", "infra/azure"])
        ok &= checkov("infra/k8s", ["--framework", "kubernetes", *[arg for f in files for arg in ("-f", str(f))]])
        ok &= check_monitoring()
    sys.stdout.write("deploy-check: " + ("all passed\n" if ok else "FAILED\n"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
