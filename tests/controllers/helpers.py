"""Helpers for tests that drive Kocoon objects on the local cluster."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from kocoon.devcluster import Cluster
from tests.conftest import CREATED_NAMESPACES


def new_namespace(cluster: Cluster, prefix: str = "t") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    CREATED_NAMESPACES.append(name)
    return name


def get(cluster: Cluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise AssertionError(result.stderr)
    obj: dict[str, Any] = json.loads(result.stdout)
    return obj


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2
) -> Any:
    """Poll `probe` until it returns something truthy; fail with `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def sandbox_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "template": {
            "image": "busybox",
            "ports": [{"name": "http", "containerPort": 8080}],
        },
        "runtimeClassName": "runc",
        "network": {"exposedPorts": ["http"]},
    }
    base.update(spec)
    return {
        "apiVersion": "kocoon.io/v1alpha1",
        "kind": "Sandbox",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def phase_of(cluster: Cluster, namespace: str, name: str) -> str | None:
    sandbox = get(cluster, "sandbox", namespace, name)
    return None if sandbox is None else sandbox.get("status", {}).get("phase")


def wait_phase(
    cluster: Cluster, namespace: str, name: str, phase: str, timeout: float = 30
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        sandbox = get(cluster, "sandbox", namespace, name)
        if sandbox and sandbox.get("status", {}).get("phase") == phase:
            return sandbox
        return None

    sandbox: dict[str, Any] = wait_for(f"{namespace}/{name} to be {phase}", probe, timeout)
    return sandbox


def sandbox_events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Events about one Sandbox, oldest first."""
    selector = f"involvedObject.name={name},involvedObject.kind=Sandbox"
    out = cluster.kubectl(
        "get", "events", "-n", namespace, "-o", "json", f"--field-selector={selector}"
    ).stdout
    events: list[dict[str, Any]] = json.loads(out)["items"]
    return sorted(events, key=lambda e: e["metadata"]["creationTimestamp"])
