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
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.conftest import install_crds, start_operator, stop_operator

from kocoon.devcluster import Cluster, images, realnode, stack

pytestmark = pytest.mark.node

T = TypeVar("T")
NAME = "counter"
IDLE_TIMEOUT_SECONDS = 3


@dataclass
class Stack:
    cluster: Cluster
    router: str
    agent_state: Path
    restored_root: Path
    namespace: str

    def kubectl(self, *args: str, check: bool = True) -> str:
        return self.cluster.kubectl(*args, "-n", self.namespace, check=check).stdout

    def sandbox(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.kubectl("get", "sandbox", NAME, "-o", "json"))
        return found

    def phase(self) -> str | None:
        phase: str | None = self.sandbox().get("status", {}).get("phase")
        return phase


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# CRIU reads a process's resource limits (prlimit), which needs the checkpointed process to run
# as CRIU's own user or CRIU to hold CAP_SYS_RESOURCE. Root on a normal node has it; where root
# lacks it (some VMs), only a sandbox running as root can be checkpointed with its memory.
CAP_SYS_RESOURCE = 24
ROOT_IS_ENOUGH = realnode.has_capability(CAP_SYS_RESOURCE)


def sandbox_manifest(namespace: str, *, as_root: bool = not ROOT_IS_ENOUGH) -> dict[str, Any]:
    template: dict[str, Any] = {
        "image": images.reference(images.PYTHON),
        "imagePullPolicy": "Never",
        "ports": [{"name": "http", "containerPort": images.COUNTER_PORT}],
        "nodeSelector": {realnode.REAL_NODE_LABEL: "true"},
        "tolerations": [{**realnode.REAL_NODE_TAINT, "operator": "Equal"}],
    }
    if as_root:
        template["securityContext"] = {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}
    return {
        "apiVersion": "kocoon.io/v1alpha1",
        "kind": "Sandbox",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "runtimeClassName": "runc",
            "hibernation": "memory",
            "idleTimeout": f"{IDLE_TIMEOUT_SECONDS}s",
            "workspace": {"size": "64Mi", "mountPath": "/workspace"},
            "template": template,
        },
    }


@pytest.fixture
def running_stack(real_node: Cluster, tmp_path: Path) -> Iterator[Stack]:
    install_crds(real_node)
    agent_env = stack.start_agent(real_node)
    operator = start_operator(real_node, tmp_path, env=agent_env)
    _, router = stack.start_router(real_node)
    namespace = f"node-hibernate-{time.monotonic_ns() % 10**6}"
    real_node.kubectl("create", "namespace", namespace)
    node = realnode.layout(real_node.state)
    running = Stack(
        real_node,
        router,
        Path(real_node.state.directory) / "agent" / "state",
        node.runc_root / "kocoon-restored",
        namespace,
    )
    try:
        yield running
    finally:
        running.kubectl("delete", "sandbox", NAME, "--ignore-not-found", "--timeout=60s")
        real_node.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        stop_operator(operator)
        stack.stop_process(real_node, "kocoon-router")
        stack.stop_process(real_node, "kocoon-agent")
        errors = [line for line in operator.output().splitlines() if '"level": "error"' in line]
        assert not errors, "\n".join(errors[:10])


def request(url: str, token: str) -> dict[str, Any]:
    call = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(call, timeout=120) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def stored_checkpoints(state: Path) -> list[str]:
    root = state / "checkpoints"
    return (
        sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        if root.is_dir()
        else []
    )


def restored_containers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def hibernate(running: Stack) -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    try:
        wait_for("Hibernated", lambda: running.phase() == "Hibernated", timeout=60)
    except AssertionError:
        leases = running.kubectl("get", "lease", "-o", "json")
        raise AssertionError(f"{json.dumps(running.sandbox()['status'])}\n{leases}") from None
    sandbox = running.sandbox()
    return sandbox, time.monotonic() - began


def test_sandbox_hibernates_with_memory_and_wakes_on_a_request(running_stack: Stack) -> None:
    running = running_stack
    running.cluster.apply(sandbox_manifest(running.namespace))
    wait_for("Running", lambda: running.phase() == "Running")
    secret = json.loads(running.kubectl("get", "secret", f"{NAME}-token", "-o", "json"))
    token = base64.b64decode(secret["data"]["token"]).decode()
    url = f"{running.router}/sandboxes/{running.namespace}/{NAME}/"
    first = wait_for("an answer", lambda: _try(url, token))
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
    before = wait_for("an answer", lambda: _try(url, token))
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


def _try(url: str, token: str) -> dict[str, Any] | None:
    try:
        return request(url, token)
    except (urllib.error.URLError, OSError):
        return None
