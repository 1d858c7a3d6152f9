"""Level-based reconcile on the local cluster: children come back, unwanted ones go, deadlines
fire on time, failed pods are replaced and deletion cleans up — the operator as a process."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from kocoon.devcluster import Cluster
from tests.conftest import OperatorProcess
from tests.controllers.helpers import (
    get,
    new_namespace,
    sandbox_events,
    sandbox_manifest,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.integration

FILESYSTEM = {"hibernation": "filesystem", "workspace": {"size": "1Gi"}}


def create(cluster: Cluster, namespace: str, name: str, **spec: Any) -> None:
    manifest = sandbox_manifest(name, namespace, **spec)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def condition(sandbox: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {c["type"]: c for c in sandbox["status"]["conditions"]}[kind]
    return found


def test_every_child_deleted_by_hand_comes_back(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "kids")
    create(cluster, namespace, "c", **FILESYSTEM)
    wait_phase(cluster, namespace, "c", "Running")
    children = [
        ("secret", "c-token"),
        ("service", "c"),
        ("networkpolicy", "c-sandbox"),
        ("lease", "kocoon-activity-sandbox-c"),
    ]
    before = {}
    for kind, name in children:
        child = get(cluster, kind, namespace, name)
        assert child is not None, kind
        before[kind] = child["metadata"]["uid"]
    for kind, name in children:
        cluster.kubectl("delete", kind, name, "-n", namespace, "--wait=true")
    for kind, name in children:
        back = wait_for(
            f"{kind} {name} to be recreated",
            lambda kind=kind, name=name: get(cluster, kind, namespace, name),
            timeout=10,
        )
        assert back["metadata"]["uid"] != before[kind], kind
    sandbox = get(cluster, "sandbox", namespace, "c")
    assert sandbox is not None
    assert condition(sandbox, "ChildrenReady")["status"] == "True"


def test_removing_the_ports_removes_the_service(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "ports")
    create(cluster, namespace, "p", **FILESYSTEM)
    wait_phase(cluster, namespace, "p", "Running")
    assert get(cluster, "service", namespace, "p") is not None
    patch = {"spec": {"template": {"ports": None}, "network": {"exposedPorts": None}}}
    cluster.kubectl(
        "patch", "sandbox", "p", "-n", namespace, "--type=merge", "-p", json.dumps(patch)
    )
    wait_for("the Service to go", lambda: get(cluster, "service", namespace, "p") is None, 10)
    assert get(cluster, "networkpolicy", namespace, "p-sandbox") is not None


def test_an_idle_timeout_of_two_seconds_hibernates_within_a_second_of_due(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "due")
    create(cluster, namespace, "d", idleTimeout="2s", **FILESYSTEM)
    running = wait_phase(cluster, namespace, "d", "Running")
    since = moment(running["status"]["phaseSince"])
    hibernated = wait_phase(cluster, namespace, "d", "Hibernated", timeout=15)
    # Ready turned False at the moment the idle deadline fired (the Hibernating transition).
    fired = moment(condition(hibernated, "Ready")["lastTransitionTime"])
    late = (fired - since).total_seconds() - 2.0
    assert 0 <= late <= 1.0, f"hibernated {late:.2f} s after the deadline"


def test_an_evicted_pod_is_replaced_and_counted(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "evict")
    create(cluster, namespace, "e", **FILESYSTEM)
    wait_phase(cluster, namespace, "e", "Running")
    pod = get(cluster, "pod", namespace, "e")
    assert pod is not None
    status = {
        "status": {
            "phase": "Failed",
            "reason": "Evicted",
            "message": "The node was low on resource: memory.",
            "conditions": [{"type": "Ready", "status": "False"}],
        }
    }
    cluster.kubectl(
        "patch",
        "pod",
        "e",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )

    def replaced() -> dict[str, Any] | None:
        new = get(cluster, "pod", namespace, "e")
        if new is None or new["metadata"]["uid"] == pod["metadata"]["uid"]:
            return None
        return new

    wait_for("a new pod", replaced, timeout=20)
    sandbox = wait_phase(cluster, namespace, "e", "Running")
    assert sandbox["status"]["restarts"] == 1
    assert "PodFailed" in [e["reason"] for e in sandbox_events(cluster, namespace, "e")]


def test_deletion_is_terminating_then_gone(cluster: Cluster, operator: OperatorProcess) -> None:
    namespace = new_namespace(cluster, "bye")
    create(cluster, namespace, "g", **FILESYSTEM)
    sandbox = wait_phase(cluster, namespace, "g", "Running")
    assert "kocoon.io/sandbox-cleanup" in sandbox["metadata"]["finalizers"]
    cluster.kubectl("delete", "sandbox", "g", "-n", namespace, "--wait=false")
    wait_for("the Sandbox to go", lambda: get(cluster, "sandbox", namespace, "g") is None, 20)
