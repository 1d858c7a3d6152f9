"""The Sandbox life cycle on the local cluster, with the operator as a real process."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from kocoon.devcluster import Cluster
from tests.conftest import OperatorProcess
from tests.controllers.helpers import (
    get,
    new_namespace,
    phase_of,
    sandbox_events,
    sandbox_manifest,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.integration


def create(cluster: Cluster, namespace: str, name: str, **spec: Any) -> None:
    manifest = sandbox_manifest(name, namespace, **spec)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def condition(sandbox: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {c["type"]: c for c in sandbox["status"]["conditions"]}[kind]
    return found


def request_wake(cluster: Cluster, namespace: str, name: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cluster.kubectl(
        "annotate",
        "lease",
        f"kocoon-activity-sandbox-{name}",
        "-n",
        namespace,
        f"kocoon.io/wake-requested-at={stamp}",
        "--overwrite",
    )


def event_reasons(cluster: Cluster, namespace: str, name: str) -> list[str]:
    return [event["reason"] for event in sandbox_events(cluster, namespace, name)]


FILESYSTEM = {"hibernation": "filesystem", "workspace": {"size": "1Gi"}}


def test_idle_sandbox_hibernates_and_a_wake_request_wakes_it(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "idle")
    create(cluster, namespace, "s", idleTimeout="3s", **FILESYSTEM)
    running = wait_phase(cluster, namespace, "s", "Running")
    first_pod = get(cluster, "pod", namespace, "s")
    assert first_pod is not None

    hibernated = wait_phase(cluster, namespace, "s", "Hibernated", timeout=40)
    assert get(cluster, "pod", namespace, "s") is None
    assert get(cluster, "pvc", namespace, "s-workspace") is not None  # the workspace stays
    assert condition(hibernated, "Hibernated")["status"] == "True"
    assert condition(hibernated, "Hibernated")["reason"] == "IdleTimeout"
    assert condition(hibernated, "Ready")["status"] == "False"
    assert "podIP" not in hibernated["status"]

    request_wake(cluster, namespace, "s")
    woke = wait_phase(cluster, namespace, "s", "Running")
    second_pod = get(cluster, "pod", namespace, "s")
    assert second_pod is not None
    assert second_pod["metadata"]["uid"] != first_pod["metadata"]["uid"]
    usage = woke["status"]["usage"]
    assert usage["wakeCount"] == 1
    assert usage["lastWakeLatencySeconds"] > 0
    lease = get(cluster, "lease", namespace, "kocoon-activity-sandbox-s")
    assert lease is not None
    assert "kocoon.io/wake-requested-at" not in (lease["metadata"].get("annotations") or {})
    reasons = event_reasons(cluster, namespace, "s")
    assert "IdleTimeout" in reasons
    assert "SandboxWaking" in reasons
    assert running["metadata"]["uid"] == woke["metadata"]["uid"]


def test_operating_mode_is_the_users_intent(cluster: Cluster, operator: OperatorProcess) -> None:
    namespace = new_namespace(cluster, "mode")
    create(cluster, namespace, "m", operatingMode="Hibernated", **FILESYSTEM)
    wait_phase(cluster, namespace, "m", "Hibernated")
    assert get(cluster, "pod", namespace, "m") is None
    request_wake(cluster, namespace, "m")  # ignored: the user wants it hibernated
    cluster.kubectl(
        "patch",
        "sandbox",
        "m",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"operatingMode": "Running"}}',
    )
    wait_phase(cluster, namespace, "m", "Running")
    cluster.kubectl(
        "patch",
        "sandbox",
        "m",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"operatingMode": "Hibernated"}}',
    )
    wait_phase(cluster, namespace, "m", "Hibernated")
    wait_for("the pod to go", lambda: get(cluster, "pod", namespace, "m") is None)


def test_running_mode_never_hibernates_on_idle(cluster: Cluster, operator: OperatorProcess) -> None:
    namespace = new_namespace(cluster, "keep")
    create(cluster, namespace, "k", idleTimeout="1s", operatingMode="Running", **FILESYSTEM)
    wait_phase(cluster, namespace, "k", "Running")
    sandbox = get(cluster, "sandbox", namespace, "k")
    assert sandbox is not None
    time.sleep(4)  # well past the idle timeout (the deadline would fire within 1 s)
    assert phase_of(cluster, namespace, "k") == "Running"
    assert "IdleTimeout" not in event_reasons(cluster, namespace, "k")


@pytest.mark.parametrize(("policy", "kept"), [("Retain", True), ("Delete", False)])
def test_shutdown_time_expires_by_policy(
    cluster: Cluster, operator: OperatorProcess, policy: str, kept: bool
) -> None:
    namespace = new_namespace(cluster, "exp")
    soon = datetime.now(UTC).replace(microsecond=0).timestamp() + 4
    stamp = datetime.fromtimestamp(soon, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    create(cluster, namespace, "e", shutdownTime=stamp, shutdownPolicy=policy)
    wait_phase(cluster, namespace, "e", "Running")
    if kept:
        expired = wait_phase(cluster, namespace, "e", "Expired", timeout=30)
        assert condition(expired, "Expired")["reason"] == "ShutdownTimeReached"
        wait_for("the pod to go", lambda: get(cluster, "pod", namespace, "e") is None)
    else:
        wait_for(
            "the sandbox to be deleted",
            lambda: get(cluster, "sandbox", namespace, "e") is None,
            timeout=30,
        )


def test_memory_hibernation_without_an_agent_falls_back_and_says_why(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "noagent")
    create(
        cluster,
        namespace,
        "n",
        hibernation="memory",
        operatingMode="Running",
        workspace={"size": "1Gi"},
    )
    wait_phase(cluster, namespace, "n", "Running")
    cluster.kubectl(
        "patch",
        "sandbox",
        "n",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"operatingMode": "Hibernated"}}',
    )
    hibernated = wait_phase(cluster, namespace, "n", "Hibernated")
    checkpoint = condition(hibernated, "CheckpointAvailable")
    assert checkpoint["status"] == "False"
    assert checkpoint["reason"] == "CheckpointFailed"
    assert "no Kocoon agent serves node" in checkpoint["message"]
    assert "CheckpointFailed" in event_reasons(cluster, namespace, "n")


def test_unschedulable_gpu_slice_is_reported(cluster: Cluster, operator: OperatorProcess) -> None:
    namespace = new_namespace(cluster, "gpu")
    create(cluster, namespace, "g", gpu={"mode": "mig", "profile": "7g.80gb"})

    def pending_with_reason() -> dict[str, Any] | None:
        sandbox = get(cluster, "sandbox", namespace, "g")
        conditions = {c["type"]: c for c in (sandbox or {}).get("status", {}).get("conditions", [])}
        scheduled = conditions.get("PodScheduled", {})
        return sandbox if scheduled.get("reason") == "Unschedulable" else None

    sandbox = wait_for("an Unschedulable condition", pending_with_reason)
    assert sandbox["status"]["phase"] == "Pending"
    assert "nvidia.com/mig-7g.80gb" in condition(sandbox, "PodScheduled")["message"]
    assert "Unschedulable" in event_reasons(cluster, namespace, "g")


def test_mig_slice_lands_on_the_mig_node(cluster: Cluster, operator: OperatorProcess) -> None:
    namespace = new_namespace(cluster, "mig")
    create(cluster, namespace, "m", gpu={"mode": "mig", "profile": "1g.10gb"})
    sandbox = wait_phase(cluster, namespace, "m", "Running")
    assert sandbox["status"]["nodeName"] == "kwok-gpu-mig-0"
