"""Helpers of the Sandbox-level node tests: the running stack (operator, router, agent on the
local cluster with its real node), requests through the router, and what the agent keeps."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import OperatorProcess

from kocoon.devcluster import Cluster, realnode

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
