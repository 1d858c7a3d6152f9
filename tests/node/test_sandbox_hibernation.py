"""A Sandbox on the real node hibernates with its memory and wakes on a request, all driven by
the operator: the operator, router and node agent run as they do in `make dev`, and the test
only sends requests and watches.

Twice over: the second hibernation checkpoints the container the agent restored, so a sandbox
can sleep and wake for as long as it lives. Deleting it releases the checkpoint and leaves no
restored container behind.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from sandboxkit import (
    IDLE_TIMEOUT_SECONDS,
    NAME,
    ROOT_IS_ENOUGH,
    Stack,
    answer,
    hibernate,
    request,
    restored_containers,
    sandbox_manifest,
    stored_checkpoints,
    wait_for,
)

from kocoon.devcluster import realnode

pytestmark = pytest.mark.node


def test_sandbox_hibernates_with_memory_and_wakes_on_a_request(running_stack: Stack) -> None:
    running = running_stack
    running.cluster.apply(sandbox_manifest(running.namespace))
    wait_for("Running", lambda: running.phase() == "Running")
    secret = json.loads(running.kubectl("get", "secret", f"{NAME}-token", "-o", "json"))
    token = base64.b64decode(secret["data"]["token"]).decode()
    url = f"{running.router}/sandboxes/{running.namespace}/{NAME}/"
    first = wait_for("an answer", lambda: answer(url, token))
    for _ in range(2):
        before = request(url, token)
    assert before["count"] == first["count"] + 2

    timings: list[str] = []
    for cycle in (1, 2):
        # Idle: the operator checkpoints through the agent and deletes the pod.
        hibernated, seconds = hibernate(running)
        assert "checkpoint" in hibernated["status"], json.dumps(hibernated["status"]["conditions"])
        checkpoint = hibernated["status"]["checkpoint"]
        timings.append(
            f"cycle {cycle}: last request → Hibernated {seconds:.1f} s "
            f"(idle timeout {IDLE_TIMEOUT_SECONDS} s)"
        )
        assert checkpoint["driver"] == "containerd", checkpoint
        assert checkpoint["node"] == realnode.NODE_NAME
        # Compatibility recorded, and checked again before the restore.
        assert "sha256:" in checkpoint["compatibility"]["imageDigest"]
        assert checkpoint["compatibility"]["criuVersion"]
        assert stored_checkpoints(running.agent_state) == [checkpoint["id"]]
        assert not running.kubectl("get", "pods", "-o", "name")

        # A request wakes it: held by the router while the operator makes the wake pod and
        # the agent restores the checkpoint into it.
        began = time.monotonic()
        after = request(url, token)
        wake = time.monotonic() - began
        timings.append(f"cycle {cycle}: request → answer through a wake {wake:.2f} s")
        assert after["token"] == before["token"], "a new process answered: memory was lost"
        assert after["started"] == before["started"]
        assert after["count"] == before["count"] + 1
        status = wait_for(
            "Running after the wake",
            lambda: (s := running.sandbox())["status"]["phase"] == "Running" and s,
        )["status"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["CheckpointAvailable"]["status"] == "False"
        assert "memory restored" in conditions["CheckpointAvailable"]["message"]
        assert status["usage"]["wakeCount"] == cycle
        assert "checkpoint" not in status  # spent: released after the restore
        assert stored_checkpoints(running.agent_state) == []
        # The restored process writes into the wake pod's log.
        logs = running.kubectl("logs", status["podName"])
        assert '"GET / HTTP/1.1" 200' in logs, logs
        timings.append(
            f"cycle {cycle}: last wake latency {status['usage']['lastWakeLatencySeconds']} s"
        )
        before = after

    print("\n".join(timings))
    assert restored_containers(running.restored_root) != []
    running.kubectl("delete", "sandbox", NAME, "--timeout=60s")
    wait_for("the pod to go", lambda: not running.kubectl("get", "pods", "-o", "name") or None)
    wait_for(
        "the restored container to be removed",
        lambda: restored_containers(running.restored_root) == [] or None,
        timeout=30,
    )
    assert stored_checkpoints(running.agent_state) == []


def test_a_checkpoint_that_cannot_be_taken_hibernates_without_memory(
    running_stack: Stack,
) -> None:
    """A sandbox running as its usual non-root user: where CRIU lacks CAP_SYS_RESOURCE it cannot
    read that process's limits. The sandbox still hibernates and wakes (cold), and says why."""
    running = running_stack
    running.cluster.apply(sandbox_manifest(running.namespace, as_root=False))
    wait_for("Running", lambda: running.phase() == "Running")
    secret = json.loads(running.kubectl("get", "secret", f"{NAME}-token", "-o", "json"))
    token = base64.b64decode(secret["data"]["token"]).decode()
    url = f"{running.router}/sandboxes/{running.namespace}/{NAME}/"
    before = wait_for("an answer", lambda: answer(url, token))
    hibernated, _ = hibernate(running)
    conditions = {c["type"]: c for c in hibernated["status"]["conditions"]}
    after = request(url, token)
    if ROOT_IS_ENOUGH:
        assert hibernated["status"]["checkpoint"]["driver"] == "containerd"
        assert after["token"] == before["token"]
    else:
        assert "checkpoint" not in hibernated["status"]
        available = conditions["CheckpointAvailable"]
        assert available["reason"] == "CheckpointFailed"
        assert "Can't get rlimit" in available["message"], available["message"]
        assert after["token"] != before["token"]  # woke cold: a new process
        assert after["count"] == 1
