"""Kill the operator at each step of hibernating and waking, start it again, and it converges:
one pod at most at any time, the right final phase, nothing lost.

The operator dies through a failpoint (KOCOON_FAILPOINTS), exactly as a SIGKILL would leave
things: the step's effect is in the cluster, the status write after it is not.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kocoon.devcluster import Cluster
from tests.conftest import install_crds, start_operator, stop_operator
from tests.controllers.helpers import get, new_namespace, phase_of, sandbox_manifest, wait_for

pytestmark = pytest.mark.integration

SPEC = {"hibernation": "memory", "workspace": {"size": "1Gi"}}

# (failpoint, how the sandbox starts, what is asked of it once the failing operator runs, final)
SCENARIOS = [
    ("after:CreatePod", "Running", None, "Running"),
    ("before-status:Running", "Running", None, "Running"),
    ("before-status:Hibernating", "Running", "Hibernated", "Hibernated"),
    ("after:Checkpoint", "Running", "Hibernated", "Hibernated"),
    ("after:DeletePod", "Running", "Hibernated", "Hibernated"),
    ("before-status:Hibernated", "Running", "Hibernated", "Hibernated"),
    ("before-status:Waking", "Hibernated", "Auto", "Running"),
    ("after:CreatePod", "Hibernated", "Auto", "Running"),
    ("after:ClearWakeRequest", "Hibernated", "Auto", "Running"),
]


def pods_of(cluster: Cluster, namespace: str) -> int:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", "kocoon.io/sandbox=r", "-o", "json")
    return len(json.loads(out.stdout)["items"])


@pytest.mark.parametrize(
    ("failpoint", "start", "ask", "final"),
    SCENARIOS,
    ids=[f"{s[0]}-from-{s[1]}" for s in SCENARIOS],
)
def test_operator_killed_at_a_step_converges_after_restart(
    cluster: Cluster, tmp_path: Path, failpoint: str, start: str, ask: str | None, final: str
) -> None:
    install_crds(cluster)
    namespace = new_namespace(cluster, "kill")
    mode = "Running" if start == "Running" else "Hibernated"
    manifest = sandbox_manifest("r", namespace, operatingMode=mode, **SPEC)

    if ask is not None:  # bring it to its starting phase with a healthy operator first
        healthy = start_operator(cluster, tmp_path)
        try:
            cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
            wait_for(f"phase {start}", lambda: phase_of(cluster, namespace, "r") == start)
        finally:
            stop_operator(healthy)

    failing = start_operator(cluster, tmp_path, env={"KOCOON_FAILPOINTS": failpoint})
    try:
        if ask is None:
            cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        else:
            cluster.kubectl(
                "patch",
                "sandbox",
                "r",
                "-n",
                namespace,
                "--type=merge",
                "-p",
                json.dumps({"spec": {"operatingMode": ask}}),
            )
            if ask == "Auto":
                cluster.kubectl(
                    "annotate",
                    "lease",
                    "kocoon-activity-sandbox-r",
                    "-n",
                    namespace,
                    "kocoon.io/wake-requested-at=2026-01-01T00:00:00.000000Z",
                    "--overwrite",
                )
        failing.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the operator never reached failpoint {failpoint}:\n{failing.output()[-3000:]}"
        )
    finally:
        stop_operator(failing)
    assert failing.process.returncode == 137, failing.output()[-3000:]
    assert pods_of(cluster, namespace) <= 1

    restarted = start_operator(cluster, tmp_path)
    try:

        def converged() -> bool:
            assert pods_of(cluster, namespace) <= 1, "a second pod appeared"
            sandbox = get(cluster, "sandbox", namespace, "r") or {}
            status = sandbox.get("status", {})
            pod = get(cluster, "pod", namespace, "r")
            return status.get("phase") == final and (pod is not None) == (final == "Running")

        wait_for(f"convergence to {final}", converged, timeout=40)
        sandbox = get(cluster, "sandbox", namespace, "r")
        lease_after = get(cluster, "lease", namespace, "kocoon-activity-sandbox-r")
    finally:
        # Delete while an operator runs, so the Sandbox's finalizer is handled.
        cluster.kubectl(
            "delete",
            "namespace",
            namespace,
            "--wait=true",
            "--timeout=60s",
            check=False,
            timeout=90,
        )
        stop_operator(restarted)
    assert sandbox is not None
    if final == "Running":
        ready = {c["type"]: c for c in sandbox["status"]["conditions"]}["Ready"]
        assert ready["status"] == "True"
        lease = lease_after or {}
        assert "kocoon.io/wake-requested-at" not in (
            lease.get("metadata", {}).get("annotations") or {}
        )
