"""Kill the operator at each step of a model's wake and scale-down, start it again, and it
converges: never a second pod for a replica, the right final phase, the wake answered.

The operator dies through a failpoint (KOCOON_FAILPOINTS), as a SIGKILL would leave things:
the step's effect is in the cluster, the status write after it is not.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kocoon import contract
from kocoon.devcluster import Cluster
from tests.conftest import install_crds, start_operator, stop_operator
from tests.controllers.helpers import get, new_namespace, wait_for
from tests.model.test_controller import deployment, replica_pods

pytestmark = pytest.mark.integration

# (failpoint, what is asked of the model once the failing operator runs, final phase)
SCENARIOS = [
    ("model:before-status:Waking", "wake", "Ready"),
    ("model:after-create", "wake", "Ready"),
    ("model:before-status:Ready", "wake", "Ready"),
    ("model:after-delete", "scale-to-zero", "ScaledToZero"),
    ("model:before-status:ScaledToZero", "scale-to-zero", "ScaledToZero"),
]


def status_of(cluster: Cluster, namespace: str) -> dict[str, Any]:
    found = get(cluster, "modeldeployment", namespace, "r") or {}
    status: dict[str, Any] = found.get("status") or {}
    return status


def ask(cluster: Cluster, namespace: str, what: str) -> None:
    if what == "wake":
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        cluster.kubectl(
            "annotate",
            "lease",
            contract.activity_lease_name(contract.TARGET_KIND_MODEL, "r"),
            "-n",
            namespace,
            f"{contract.WAKE_REQUESTED_ANNOTATION}={stamp}",
            "--overwrite",
        )
    else:
        cluster.kubectl("scale", "modeldeployment", "r", "-n", namespace, "--replicas=0")


@pytest.mark.parametrize(("failpoint", "what", "final"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_operator_killed_at_a_step_converges_after_restart(
    cluster: Cluster, tmp_path: Path, failpoint: str, what: str, final: str
) -> None:
    install_crds(cluster)
    namespace = new_namespace(cluster, "mkill")
    spec: dict[str, Any] = {"scaling": {"minReplicas": 0, "maxReplicas": 2, "scaleDownDelay": "1h"}}
    start = "ScaledToZero"
    if what == "scale-to-zero":
        spec["replicas"] = 1
        start = "Ready"
    healthy = start_operator(cluster, tmp_path)
    try:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment("r", namespace, **spec)))
        wait_for(f"phase {start}", lambda: status_of(cluster, namespace).get("phase") == start)
    finally:
        stop_operator(healthy)

    failing = start_operator(cluster, tmp_path, env={"KOCOON_FAILPOINTS": failpoint})
    try:
        ask(cluster, namespace, what)
        failing.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the operator never reached {failpoint}:\n{failing.output()[-3000:]}")
    finally:
        stop_operator(failing)
    assert failing.process.returncode == 137, failing.output()[-3000:]

    restarted = start_operator(cluster, tmp_path)
    try:

        def converged() -> bool:
            pods = replica_pods(cluster, namespace, "r")
            names = [p["metadata"]["name"] for p in pods]
            assert len(names) == len(set(names)) <= 1, names
            status = status_of(cluster, namespace)
            return status.get("phase") == final and len(pods) == (final == "Ready")

        wait_for(f"convergence to {final}", converged, timeout=40)
        status = status_of(cluster, namespace)
        lease = get(
            cluster,
            "lease",
            namespace,
            contract.activity_lease_name(contract.TARGET_KIND_MODEL, "r"),
        )
    finally:
        cluster.kubectl(
            "delete", "namespace", namespace, "--wait=true", "--timeout=60s", check=False,
            timeout=90,
        )  # fmt: skip
        stop_operator(restarted)
    if what == "wake":
        assert status["usage"]["wakeCount"] == 1
        assert status["lastWakeLatencySeconds"] >= 0
        annotations = (lease or {}).get("metadata", {}).get("annotations") or {}
        assert contract.WAKE_REQUESTED_ANNOTATION not in annotations
    else:
        assert status["replicas"] == 0
