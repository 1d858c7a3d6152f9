"""The Sandbox controller's reconcile against kmock's Kubernetes emulator: fast, no cluster.

The clock is the controller's own (`sandbox._now`), moved forward by the test, so idle
timeouts are checked exactly instead of by sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import kmock
import pytest
from kubernetes_asyncio import client as k8s

from kocoon.api.sandbox import Checkpoint
from kocoon.builders.context import BuildSettings
from kocoon.config import OperatorConfig
from kocoon.controllers import context, sandbox
from kocoon.controllers.checkpoints import CheckpointUnavailable, Target
from kocoon.kube import client as kube_client
from kocoon.kube.resources import kind_of

pytestmark = pytest.mark.handler

NS, NAME = "team", "box"
SANDBOXES = "kocoon.io/v1alpha1/sandboxes"


class NoAgent:
    """What the operator meets on a node without an agent: a clear 'unavailable'."""

    async def checkpoint(self, target: Target, checkpoint_id: str) -> Checkpoint:
        raise CheckpointUnavailable(f"no Kocoon agent serves node {target.node}")

    async def restore(self, target: Target, checkpoint: Checkpoint) -> None:
        raise CheckpointUnavailable("no agent")

    async def release(self, namespace: str, checkpoint: Checkpoint) -> None:
        raise CheckpointUnavailable("no agent")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[kmock.KubernetesEmulator, str]]:
    async with kmock.KubernetesEmulator() as k, kmock.Server(k) as server:
        k.resources[SANDBOXES] = {
            "kind": "Sandbox",
            "namespaced": True,
            "singular": "sandbox",
            "verbs": ["list", "watch", "get", "patch", "create", "delete"],
            "subresources": ["status"],
            "shortnames": [],
            "categories": [],
        }
        k.resources.load_bundled()
        yield k, str(server.url).rstrip("/")


@pytest.fixture
async def ctx(
    emulator: tuple[kmock.KubernetesEmulator, str],
) -> AsyncIterator[context.OperatorContext]:
    configuration = k8s.Configuration(host=emulator[1])
    api = k8s.ApiClient(configuration)
    yield context.OperatorContext(
        api=api, config=OperatorConfig(), build=BuildSettings(), checkpointer=NoAgent()
    )
    await api.close()


@pytest.fixture(autouse=True)
def apply_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    """kmock's emulator has no server-side apply: a PATCH of a missing object is a 404 there,
    where a real API server creates it. Give apply that meaning back for these tests."""
    original = kube_client.apply

    async def apply(api: k8s.ApiClient, obj: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        try:
            return await original(api, obj, **kwargs)
        except kube_client.ApiError as error:
            if error.status != 404:
                raise
            kind = kind_of(obj)
            return await kube_client.request(
                api, "POST", kind.path(obj["metadata"].get("namespace")), body=obj
            )

    monkeypatch.setattr(kube_client, "apply", apply)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(sandbox, "_now", fake)
    return fake


def stored(k: kmock.KubernetesEmulator, resource: str, name: str = NAME) -> dict[str, Any] | None:
    try:
        obj = k.objects[resource, NS, name]
    except KeyError:
        return None
    if getattr(obj, "deleted", False):
        return None
    return dict(obj)


async def create_sandbox(ctx: context.OperatorContext, **spec: Any) -> None:
    body = {
        "apiVersion": "kocoon.io/v1alpha1",
        "kind": "Sandbox",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "uid": "uid-1",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": "2026-11-23T12:00:00Z",
        },
        "spec": {
            "template": {"image": "busybox", "ports": [{"name": "http", "containerPort": 80}]},
            "runtimeClassName": "runc",
            **spec,
        },
    }
    from kocoon.kube.client import request

    await request(
        ctx.api,
        "POST",
        f"/apis/{SANDBOXES}".replace("/v1alpha1/", "/v1alpha1/namespaces/" + NS + "/"),
        body=body,
    )


def mark_pod_running(k: kmock.KubernetesEmulator) -> None:
    pod = k.objects["v1/pods", NS, NAME]
    pod.patch(
        {
            "metadata": {"uid": "pod-uid-1"},
            "spec": {"nodeName": "n1"},
            "status": {
                "phase": "Running",
                "podIP": "127.9.9.9",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
    )


async def test_reconcile_creates_children_and_reports_running(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_sandbox(ctx)
    await sandbox.reconcile(ctx, NS, NAME)
    pod = stored(k, "v1/pods")
    assert pod is not None
    assert pod["spec"]["runtimeClassName"] == "runc"
    assert stored(k, "v1/secrets", f"{NAME}-token") is not None
    assert stored(k, "v1/services") is not None
    status = stored(k, SANDBOXES)["status"]  # type: ignore[index]
    assert status["phase"] == "Pending"

    mark_pod_running(k)
    await sandbox.reconcile(ctx, NS, NAME)
    status = stored(k, SANDBOXES)["status"]  # type: ignore[index]
    assert status["phase"] == "Running"
    assert status["podIP"] == "127.9.9.9"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"


async def test_idle_timeout_hibernates_exactly_when_due(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_sandbox(ctx, idleTimeout="10m", hibernation="memory")
    await sandbox.reconcile(ctx, NS, NAME)
    mark_pod_running(k)
    await sandbox.reconcile(ctx, NS, NAME)
    assert stored(k, SANDBOXES)["status"]["phase"] == "Running"  # type: ignore[index]

    clock.now += timedelta(minutes=9, seconds=59)
    await sandbox.reconcile(ctx, NS, NAME)
    assert stored(k, SANDBOXES)["status"]["phase"] == "Running"  # type: ignore[index]

    clock.now += timedelta(seconds=2)
    await sandbox.reconcile(ctx, NS, NAME)  # decides to hibernate
    assert stored(k, SANDBOXES)["status"]["phase"] == "Hibernating"  # type: ignore[index]
    await sandbox.reconcile(ctx, NS, NAME)  # no agent: memory checkpoint refused, falls back
    pod = stored(k, "v1/pods")
    assert pod is not None
    assert "kocoon.io/checkpoint-failed" in pod["metadata"]["annotations"]
    conditions = {c["type"]: c for c in stored(k, SANDBOXES)["status"]["conditions"]}  # type: ignore[index]
    assert conditions["CheckpointAvailable"]["reason"] == "CheckpointFailed"
    await sandbox.reconcile(ctx, NS, NAME)  # deletes the pod
    assert stored(k, "v1/pods") is None
    await sandbox.reconcile(ctx, NS, NAME)
    assert stored(k, SANDBOXES)["status"]["phase"] == "Hibernated"  # type: ignore[index]
