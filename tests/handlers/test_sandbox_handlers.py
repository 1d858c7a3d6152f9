"""The Sandbox controller's reconcile against kmock's Kubernetes emulator: fast, no cluster.

The clock is the controller's own (`sandbox._now`), moved forward by the test, so idle
timeouts are checked exactly instead of by sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import kmock
import pytest

from kocoon.api.sandbox import Checkpoint
from kocoon.controllers import context, sandbox
from kocoon.controllers.checkpoints import CheckpointUnavailable, Target
from tests import kmockkit
from tests.kmockkit import SANDBOXES, Clock

pytestmark = pytest.mark.handler

NS, NAME = "team", "box"


class NoAgent:
    """What the operator meets on a node without an agent: a clear 'unavailable'."""

    async def checkpoint(self, target: Target, checkpoint_id: str) -> Checkpoint:
        raise CheckpointUnavailable(f"no Kocoon agent serves node {target.node}")

    async def restore(self, target: Target, checkpoint: Checkpoint) -> None:
        raise CheckpointUnavailable("no agent")

    async def release(self, namespace: str, checkpoint: Checkpoint) -> None:
        raise CheckpointUnavailable("no agent")


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[kmock.KubernetesEmulator, str]]:
    async with kmockkit.emulator(SANDBOXES) as running:
        yield running


@pytest.fixture
async def ctx(
    emulator: tuple[kmock.KubernetesEmulator, str],
) -> AsyncIterator[context.OperatorContext]:
    async with kmockkit.operator_context(emulator[1], NoAgent()) as operator:
        yield operator


@pytest.fixture(autouse=True)
def apply_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    kmockkit.make_apply_create(monkeypatch)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(sandbox, "_now", fake)
    return fake


def stored(k: kmock.KubernetesEmulator, resource: str, name: str = NAME) -> dict[str, Any] | None:
    return kmockkit.stored(k, resource, NS, name)


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


def mark_pod_running(k: kmock.KubernetesEmulator, uid: str = "pod-uid-1") -> None:
    pod = k.objects["v1/pods", NS, NAME]
    pod.patch(
        {
            "metadata": {"uid": uid},
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


class RecordingAgent:
    """An agent that keeps checkpoints in memory and can be told to fail a restore."""

    def __init__(self, restore_fails: bool = False) -> None:
        self.stored: dict[str, Checkpoint] = {}
        self.released: list[str] = []
        self.restored: list[str] = []
        self.restore_fails = restore_fails

    async def checkpoint(self, target: Target, checkpoint_id: str) -> Checkpoint:
        # The agent's contract: the same id again returns the stored checkpoint.
        return self.stored.setdefault(
            checkpoint_id, Checkpoint(id=checkpoint_id, node=target.node, size_bytes=1024)
        )

    async def restore(self, target: Target, checkpoint: Checkpoint) -> None:
        if self.restore_fails:
            from kocoon.controllers.checkpoints import CheckpointFailed

            raise CheckpointFailed("ArchiveCorrupt: chunk 3 failed authentication")
        # The agent's contract: restoring the same checkpoint again answers, does not redo.
        if checkpoint.id not in self.restored:
            self.restored.append(checkpoint.id)

    async def release(self, namespace: str, checkpoint: Checkpoint) -> None:
        self.stored.pop(checkpoint.id, None)
        self.released.append(checkpoint.id)


class Crash(Exception):
    """Stands for the operator dying at a failpoint."""


async def settle(
    ctx: context.OperatorContext, k: kmock.KubernetesEmulator, rounds: int = 8
) -> None:
    """Reconcile until nothing changes, bringing any new pod up as kwok would."""
    for _ in range(rounds):
        pod = stored(k, "v1/pods")
        if pod is not None and pod.get("status", {}).get("phase") != "Running":
            mark_pod_running(k, uid=f"pod-{len(str(pod))}")
        await sandbox.reconcile(ctx, NS, NAME)


def phase(k: kmock.KubernetesEmulator) -> str:
    return str(stored(k, SANDBOXES)["status"]["phase"])  # type: ignore[index]


async def test_memory_hibernation_round_trip_releases_what_it_restored(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    agent = RecordingAgent()
    ctx.checkpointer = agent
    await create_sandbox(ctx, hibernation="memory", operatingMode="Hibernated")
    await sandbox.reconcile(ctx, NS, NAME)
    await settle(ctx, k)
    assert phase(k) == "Hibernated"
    # It never ran (created hibernated), so there was nothing to checkpoint.
    assert agent.stored == {}

    k.objects[SANDBOXES, NS, NAME].patch({"spec": {"operatingMode": "Running"}})
    await settle(ctx, k)
    assert phase(k) == "Running"
    k.objects[SANDBOXES, NS, NAME].patch({"spec": {"operatingMode": "Hibernated"}})
    await settle(ctx, k)
    assert phase(k) == "Hibernated"
    status = stored(k, SANDBOXES)["status"]  # type: ignore[index]
    checkpoint_id = status["checkpoint"]["id"]
    assert list(agent.stored) == [checkpoint_id]

    k.objects[SANDBOXES, NS, NAME].patch({"spec": {"operatingMode": "Running"}})
    await settle(ctx, k)
    assert phase(k) == "Running"
    assert agent.restored == [checkpoint_id]
    assert agent.released == [checkpoint_id]  # spent once restored: nothing leaks
    assert "checkpoint" not in stored(k, SANDBOXES)["status"]  # type: ignore[index]


async def test_a_failed_restore_wakes_cold_and_says_why(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    agent = RecordingAgent(restore_fails=True)
    ctx.checkpointer = agent
    await create_sandbox(ctx, hibernation="memory")
    await settle(ctx, k)
    k.objects[SANDBOXES, NS, NAME].patch({"spec": {"operatingMode": "Hibernated"}})
    await settle(ctx, k)
    assert phase(k) == "Hibernated"
    k.objects[SANDBOXES, NS, NAME].patch({"spec": {"operatingMode": "Auto"}})
    k.objects["coordination.k8s.io/v1/leases", NS, f"kocoon-activity-sandbox-{NAME}"].patch(
        {"metadata": {"annotations": {"kocoon.io/wake-requested-at": "2026-11-23T12:00:00Z"}}}
    )
    await settle(ctx, k)
    assert phase(k) == "Running"
    conditions = {c["type"]: c for c in stored(k, SANDBOXES)["status"]["conditions"]}  # type: ignore[index]
    assert conditions["CheckpointAvailable"]["reason"] == "WokeCold"
    assert "ArchiveCorrupt" in conditions["CheckpointAvailable"]["message"]
    assert agent.stored == {}  # released, not leaked


@pytest.mark.parametrize(
    "failpoint",
    [
        "after:Checkpoint",
        "after:DeletePod",
        "after:CreatePod",
        "after:Restore",
        "before-status:Hibernated",
        "before-status:Running",
    ],
)
async def test_a_crash_at_any_memory_step_converges_without_leaks(
    emulator: tuple[kmock.KubernetesEmulator, str],
    ctx: context.OperatorContext,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    failpoint: str,
) -> None:
    k, _ = emulator
    agent = RecordingAgent()
    ctx.checkpointer = agent
    await create_sandbox(ctx, hibernation="memory")
    await settle(ctx, k)

    crashed: list[str] = []

    def hit(point: str) -> None:
        if point == failpoint and not crashed:
            crashed.append(point)
            raise Crash(point)

    monkeypatch.setattr(sandbox.failpoints, "hit", hit)
    for mode in ("Hibernated", "Running"):
        k.objects[SANDBOXES, NS, NAME].patch({"spec": {"operatingMode": mode}})
        for _ in range(10):
            try:
                await settle(ctx, k, rounds=1)
            except Crash:
                # A fresh operator: no memory of the crashed one but what is in the cluster.
                ctx = context.OperatorContext(
                    api=ctx.api, config=ctx.config, build=ctx.build, checkpointer=agent
                )
        assert phase(k) == ("Hibernated" if mode == "Hibernated" else "Running"), failpoint
    assert crashed == [failpoint]
    assert agent.stored == {}, "a checkpoint leaked"
    assert len(agent.restored) == 1
