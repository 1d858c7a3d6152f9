"""API requests a minute for idle, hibernated AgentSessions: this operator against a baseline.

Starts a local cluster, creates N sessions that stay hibernated (`operatingMode: Hibernated`,
filesystem hibernation with a workspace), then counts the API server's requests
(`apiserver_request_total`, every verb but WATCH) for agentsessions, sandboxes, secrets and
leases over one window with each operator running alone, and over one window with none (the
cluster's own requests, e.g. node leases, subtracted from both). The baseline is the operator
of another commit (`--baseline-commit`), extracted with `git archive` and run from there: both
are measured in the same run, on the same objects, one after the other.

    .venv/bin/python bench/bench_session_idle.py --sessions 20 --window 60
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kocoon.devcluster import Cluster, down, stack, up

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ("agentsessions", "sandboxes", "secrets", "leases")
LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def request_counts(cluster: Cluster) -> Counter[str]:
    """Requests so far by resource (all verbs but WATCH), from the API server's metrics."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("resource") in RESOURCES and labels.get("verb") != "WATCH":
            counts[labels["resource"]] += int(float(match["value"]))
    return counts


def window(cluster: Cluster, seconds: float) -> Counter[str]:
    before = request_counts(cluster)
    time.sleep(seconds)
    after = request_counts(cluster)
    return Counter({k: after[k] - before[k] for k in RESOURCES})


def start_operator(
    cluster: Cluster, kubeconfig: Path, source: Path, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(source),
        "KOCOON_NAMESPACE": stack.NAMESPACE,
    }
    env.pop("KOCOON_RECONCILE_INTERVAL", None)  # each operator's own default
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kocoon.cli", "operator", "--kubeconfig", str(kubeconfig)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=source,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def extract(commit: str, into: Path) -> Path:
    """The operator package of `commit`, as files (`git archive`)."""
    archive = into / "baseline.tar"
    with open(archive, "wb") as out:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "operator"], stdout=out, check=True
        )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "operator"


def session(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kocoon.io/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "owner": {"user": "bench"},
            "operatingMode": "Hibernated",
            "hibernation": "filesystem",
            "sandboxTemplate": {
                "template": {"image": "busybox"},
                "runtimeClassName": "runc",
                "workspace": {"size": "1Gi"},
            },
        },
    }


def wait_hibernated(cluster: Cluster, namespace: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = json.loads(
            cluster.kubectl("get", "agentsessions", "-n", namespace, "-o", "json").stdout
        )["items"]
        done = [s for s in items if (s.get("status") or {}).get("phase") == "Hibernated"]
        if len(done) == count:
            return
        time.sleep(1)
    raise SystemExit(f"only {len(done)} of {count} sessions hibernated in {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring")
    parser.add_argument("--baseline-commit", default="f3278ca")
    args = parser.parse_args()

    name = f"bench-sessions-{os.getpid()}"
    cluster = up(name)
    results: dict[str, Counter[str]] = {}
    try:
        stack.install_crds(cluster)
        work = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
        kubeconfig = stack.component_kubeconfig(cluster, "operator", work)
        baseline_source = extract(args.baseline_commit, work)
        namespace = "bench-sessions"
        cluster.kubectl("create", "namespace", namespace)

        current = start_operator(cluster, kubeconfig, ROOT / "operator", work / "current.log")
        try:
            cluster.apply(*(session(namespace, f"s{i}") for i in range(args.sessions)))
            wait_hibernated(cluster, namespace, args.sessions, timeout=120)
            time.sleep(args.warmup)
            results["current"] = window(cluster, args.window)
        finally:
            stop(current)

        baseline = start_operator(cluster, kubeconfig, baseline_source, work / "baseline.log")
        try:
            time.sleep(args.warmup)
            results["baseline"] = window(cluster, args.window)
        finally:
            stop(baseline)
        time.sleep(5)
        results["no operator"] = window(cluster, args.window)
    finally:
        down(name)

    background = results["no operator"]
    per_minute = 60.0 / args.window
    print(
        f"{args.sessions} hibernated sessions, requests a minute (WATCH excluded), "
        f"minus the cluster's own ({dict(background)} in the window without an operator):"
    )
    print("| operator | " + " | ".join(RESOURCES) + " | total | per session |")
    print("|---" * (len(RESOURCES) + 3) + "|")
    totals = {}
    for label in ("baseline", "current"):
        counts = {k: max(0, results[label][k] - background[k]) * per_minute for k in RESOURCES}
        totals[label] = sum(counts.values())
        cells = " | ".join(f"{counts[k]:.0f}" for k in RESOURCES)
        print(f"| {label} | {cells} | {totals[label]:.0f} | {totals[label] / args.sessions:.1f} |")
    if totals["current"]:
        print(f"baseline/current: {totals['baseline'] / totals['current']:.1f}x")
    else:
        print("current: no request at all in the window")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
