"""Helpers of the Sandbox-level node tests: the running stack (operator, router, agent on the
local cluster with its real node), requests through the router, and what the agent keeps."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import OperatorProcess

from kocoon.agent import local as local_agent
from kocoon.devcluster import Cluster, processes, realnode, stack

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
    operator: OperatorProcess
    operator_env: dict[str, str]

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


# Where CRIU can only checkpoint processes of its own user (see realnode.criu_needs_root), the
# memory tests run their sandbox as root.
ROOT_IS_ENOUGH = not realnode.criu_needs_root()


def sandbox_manifest(namespace: str, *, as_root: bool = not ROOT_IS_ENOUGH) -> dict[str, Any]:
    template = realnode.counter_sandbox_template(as_root=as_root)
    if not as_root:
        # Non-root by its own settings: pod hardening is off where the others run as root.
        template["securityContext"] = {"runAsUser": 65532, "runAsGroup": 65532}
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


def answer(url: str, token: str) -> dict[str, Any] | None:
    try:
        return request(url, token)
    except (urllib.error.URLError, OSError):
        return None


# --- processes killed and started again, where they ran before ------------------------------


def kill_component(cluster: Cluster, name: str) -> None:
    """`kill -9` a process started with the cluster (agent, router): its whole process group, as
    a container's processes die with it."""
    pid = cluster.state.pids.get(name)
    assert pid is not None, f"{name} is not running"
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    wait_for(f"{name} to die", lambda: not processes.alive(pid) or None, timeout=10)


def restart_agent(cluster: Cluster, operator_env: dict[str, str]) -> None:
    """Start the node agent again on the port, credentials and state it had, so the operator
    reaches it where it did (`operator_env` is what `stack.start_agent` returned)."""
    directory = Path(cluster.state.directory) / "agent"
    creds = local_agent.credentials(directory)
    endpoint = json.loads(operator_env["KOCOON_AGENT_ENDPOINTS"])["*"]
    port = int(endpoint.rsplit(":", 1)[1])
    node = realnode.layout(cluster.state)
    extra = (
        "--cri-runc-root", str(node.runc_root / realnode.CONTAINERD_NAMESPACE),
        "--restored-runc-root", str(node.runc_root / "kocoon-restored"),
    )  # fmt: skip
    pid = cluster.start_process(
        "kocoon-agent",
        local_agent.command(
            creds, port, directory / "state", node_name=realnode.NODE_NAME, extra_args=extra
        ),
    )
    processes.wait_healthy(
        "kocoon agent", f"https://127.0.0.1:{port}/healthz", pid,
        cluster.log_path("kocoon-agent"), context=creds.client_context(), timeout=30,
    )  # fmt: skip


def restart_router(cluster: Cluster) -> None:
    """Start the router again on the ports it had (`stack.start_router` recorded them)."""
    port = cluster.state.ports["kocoon-router"]
    admin = cluster.state.ports["kocoon-router-admin"]
    kubeconfig = Path(cluster.state.directory) / "router.kubeconfig"
    pid = cluster.start_process(
        "kocoon-router",
        stack.kocoon_command(
            "router", "--kubeconfig", str(kubeconfig),
            "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
            "--activity-interval", "1",
        ),
    )  # fmt: skip
    processes.wait_healthy(
        "kocoon router", f"http://127.0.0.1:{admin}/readyz", pid,
        cluster.log_path("kocoon-router"), timeout=60,
    )  # fmt: skip
