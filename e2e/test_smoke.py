"""On kind: install the CRDs, run the operator in the cluster, reconcile a Sandbox."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parent.parent


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_operator_reconciles_a_sandbox_on_kind(kind_cluster: Path) -> None:
    kubectl(kind_cluster, "apply", "--server-side", "-f", str(ROOT / "crds"))
    kubectl(kind_cluster, "apply", "-f", str(ROOT / "gpu" / "runtimeclasses.yaml"))
    subprocess.run(
        [
            "helm",
            "install",
            "kocoon",
            str(ROOT / "charts" / "kocoon"),
            "--kubeconfig",
            str(kind_cluster),
            "--namespace",
            "kocoon-system",
            "--create-namespace",
            "--set",
            "operator.defaultRuntimeClassName=runc",
            "--wait",
        ],
        check=True,
    )
    kubectl(kind_cluster, "apply", "-f", str(ROOT / "examples" / "sandbox-code-interpreter.yaml"))
    deadline = time.monotonic() + 180
    phase = ""
    while time.monotonic() < deadline and phase != "Running":
        sandboxes = json.loads(kubectl(kind_cluster, "get", "sandboxes", "-A", "-o", "json"))
        phase = next(iter(s.get("status", {}).get("phase", "") for s in sandboxes["items"]), "")
        time.sleep(2)
    assert phase == "Running"
