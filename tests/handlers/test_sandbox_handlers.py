"""The Sandbox controller's reconcile against kmock's Kubernetes emulator: fast, no cluster.

The clock is the controller's own (`sandbox._now`), moved forward by the test, so idle
timeouts are checked exactly instead of by sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import kmock
import pytest

from kocoon.api.sandbox import Checkpoint
from kocoon.controllers import context, sandbox
from kocoon.controllers.checkpoints import CheckpointUnavailable, Target
from kocoon.controllers.reconciler import Key
from kocoon.kube import client as kube_client
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

    async def forget(self, namespace: str, name: str, node: str | None) -> None:
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

    async def forget(self, namespace: str, name: str, node: str | None) -> None:
        return None


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


# --- level-based children, errors, failures, deletion (the reconcile core) -------------------

SERVICES, POLICIES, SECRETS = "v1/services", "networking.k8s.io/v1/networkpolicies", "v1/secrets"
LEASES = "coordination.k8s.io/v1/leases"


class ForgettingAgent(RecordingAgent):
    def __init__(self, forget_fails: bool = False) -> None:
        super().__init__()
        self.forgotten: list[tuple[str, str, str | None]] = []
        self.forget_fails = forget_fails

    async def forget(self, namespace: str, name: str, node: str | None) -> None:
        if self.forget_fails:
            from kocoon.controllers.checkpoints import CheckpointFailed

            raise CheckpointFailed("agent on n1 unreachable")
        self.forgotten.append((namespace, name, node))


def delete_stored(k: kmock.KubernetesEmulator, resource: str, name: str) -> None:
    del k.objects[resource, NS, name]


def conditions_of(k: kmock.KubernetesEmulator) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in stored(k, SANDBOXES)["status"]["conditions"]}  # type: ignore[index]


async def test_every_deleted_child_is_back_after_one_reconcile(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_sandbox(ctx, workspace={"size": "1Gi"})
    await settle(ctx, k)
    children = [
        (SECRETS, f"{NAME}-token"),
        (SERVICES, NAME),
        (POLICIES, f"{NAME}-sandbox"),
        (LEASES, f"kocoon-activity-sandbox-{NAME}"),
        ("v1/persistentvolumeclaims", f"{NAME}-workspace"),
    ]
    token_before = stored(k, SECRETS, f"{NAME}-token")
    assert token_before is not None
    for resource, child in children:
        assert stored(k, resource, child) is not None, resource
        delete_stored(k, resource, child)
    await sandbox.reconcile(ctx, NS, NAME)
    for resource, child in children:
        assert stored(k, resource, child) is not None, f"{resource} not recreated"
    assert conditions_of(k)["ChildrenReady"]["status"] == "True"


async def test_the_token_secret_is_never_rewritten(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_sandbox(ctx)
    await settle(ctx, k)
    before = stored(k, SECRETS, f"{NAME}-token")
    k.objects[SANDBOXES, NS, NAME].patch({"spec": {"idleTimeout": "1h"}})
    await settle(ctx, k)
    assert stored(k, SECRETS, f"{NAME}-token") == before


async def test_removing_the_ports_deletes_the_service(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_sandbox(ctx)
    await settle(ctx, k)
    assert stored(k, SERVICES) is not None
    k.objects[SANDBOXES, NS, NAME].patch(
        {"spec": {"template": {"ports": []}}, "metadata": {"generation": 2}}
    )
    await sandbox.reconcile(ctx, NS, NAME)
    assert stored(k, SERVICES) is None
    assert stored(k, POLICIES, f"{NAME}-sandbox") is not None


async def test_a_refused_child_is_a_condition_and_hibernation_goes_on(
    emulator: tuple[kmock.KubernetesEmulator, str],
    ctx: context.OperatorContext,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k, _ = emulator
    await create_sandbox(ctx, hibernation="filesystem", workspace={"size": "1Gi"})
    await settle(ctx, k)
    assert phase(k) == "Running"
    original = kube_client.apply

    async def apply(api: Any, obj: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if obj["kind"] == "NetworkPolicy":
            raise kube_client.ApiError(
                422, "Unprocessable Entity", {"message": "spec.egress[0]: Invalid value"}
            )
        return await original(api, obj, **kwargs)

    monkeypatch.setattr(kube_client, "apply", apply)
    delete_stored(k, POLICIES, f"{NAME}-sandbox")
    k.objects[SANDBOXES, NS, NAME].patch({"spec": {"operatingMode": "Hibernated"}})
    await settle(ctx, k)
    assert phase(k) == "Hibernated"
    children = conditions_of(k)["ChildrenReady"]
    assert children["status"] == "False"
    assert children["reason"] == "ChildApplyFailed"
    assert "NetworkPolicy box-sandbox: 422: spec.egress[0]: Invalid value" in children["message"]


async def test_a_hibernated_sandbox_with_nothing_new_writes_nothing(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_sandbox(
        ctx, hibernation="filesystem", operatingMode="Hibernated", workspace={"size": "1Gi"}
    )
    await settle(ctx, k)
    assert phase(k) == "Hibernated", stored(k, SANDBOXES)["status"]  # type: ignore[index]
    before = stored(k, SANDBOXES)
    for _ in range(5):
        clock.now += timedelta(minutes=10)
        await sandbox.reconcile(ctx, NS, NAME)
    assert stored(k, SANDBOXES) == before


async def test_running_usage_is_written_at_most_once_a_minute(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_sandbox(ctx)
    await settle(ctx, k)
    assert phase(k) == "Running"
    first = stored(k, SANDBOXES)["status"]["usage"]  # type: ignore[index]
    clock.now += timedelta(seconds=30)
    await sandbox.reconcile(ctx, NS, NAME)
    assert stored(k, SANDBOXES)["status"]["usage"] == first  # type: ignore[index]
    clock.now += timedelta(seconds=31)
    await sandbox.reconcile(ctx, NS, NAME)
    usage = stored(k, SANDBOXES)["status"]["usage"]  # type: ignore[index]
    assert usage["idleSeconds"] + usage.get("activeSeconds", 0) >= 61


async def test_a_failed_pod_is_replaced_and_counted_then_the_sandbox_fails(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_sandbox(ctx)
    await settle(ctx, k)
    for attempt in range(1, 6):
        pod = k.objects["v1/pods", NS, NAME]
        pod.patch(
            {
                "status": {
                    "phase": "Failed",
                    "reason": "Evicted",
                    "conditions": [{"type": "Ready", "status": "False"}],
                }
            }
        )
        await sandbox.reconcile(ctx, NS, NAME)  # deletes the ended pod
        assert stored(k, "v1/pods") is None
        status = stored(k, SANDBOXES)["status"]  # type: ignore[index]
        assert status["restarts"] == attempt
        if attempt < 5:
            assert status["phase"] == "Starting"
            await settle(ctx, k)
            assert phase(k) == "Running"
    status = stored(k, SANDBOXES)["status"]  # type: ignore[index]
    assert status["phase"] == "Failed"
    assert "Evicted" in conditions_of(k)["Ready"]["message"]
    await sandbox.reconcile(ctx, NS, NAME)
    assert stored(k, "v1/pods") is None  # Failed stays down until the spec changes
    k.objects[SANDBOXES, NS, NAME].patch(
        {"spec": {"idleTimeout": "1h"}, "metadata": {"generation": 2}}
    )
    await settle(ctx, k)
    assert phase(k) == "Running"
    assert "restarts" not in stored(k, SANDBOXES)["status"]  # type: ignore[index]


async def test_the_release_annotation_drops_the_memory_and_stays_hibernated(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    agent = RecordingAgent()
    ctx.checkpointer = agent
    await create_sandbox(ctx, hibernation="memory")
    await settle(ctx, k)
    k.objects[SANDBOXES, NS, NAME].patch({"spec": {"operatingMode": "Hibernated"}})
    await settle(ctx, k)
    checkpoint = stored(k, SANDBOXES)["status"]["checkpoint"]["id"]  # type: ignore[index]
    # Another id (an older checkpoint) is not this one: nothing happens.
    k.objects[SANDBOXES, NS, NAME].patch(
        {"metadata": {"annotations": {"kocoon.io/release-checkpoint": "other"}}}
    )
    await settle(ctx, k)
    assert agent.released == []
    k.objects[SANDBOXES, NS, NAME].patch(
        {"metadata": {"annotations": {"kocoon.io/release-checkpoint": checkpoint}}}
    )
    await settle(ctx, k)
    status = stored(k, SANDBOXES)["status"]  # type: ignore[index]
    assert agent.released == [checkpoint]
    assert status["phase"] == "Hibernated"
    assert "checkpoint" not in status
    assert conditions_of(k)["CheckpointAvailable"]["reason"] == "HibernatedStateReleased"


async def test_deletion_says_terminating_releases_forgets_and_lets_go(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    agent = ForgettingAgent()
    ctx.checkpointer = agent
    await create_sandbox(ctx, hibernation="memory")
    await settle(ctx, k)
    assert "kocoon.io/sandbox-cleanup" in stored(k, SANDBOXES)["metadata"]["finalizers"]  # type: ignore[index]
    k.objects[SANDBOXES, NS, NAME].patch({"spec": {"operatingMode": "Hibernated"}})
    await settle(ctx, k)
    checkpoint = stored(k, SANDBOXES)["status"]["checkpoint"]["id"]  # type: ignore[index]
    k.objects[SANDBOXES, NS, NAME].patch(
        {"metadata": {"deletionTimestamp": "2026-11-23T12:00:00Z"}}
    )
    await sandbox.reconcile(ctx, NS, NAME)
    assert agent.released == [checkpoint]
    assert agent.forgotten == [(NS, NAME, "n1")]
    box = stored(k, SANDBOXES)
    assert box is None or "kocoon.io/sandbox-cleanup" not in (
        box["metadata"].get("finalizers") or []
    )


async def test_a_cleanup_that_keeps_failing_gives_up_with_a_warning(
    emulator: tuple[kmock.KubernetesEmulator, str],
    ctx: context.OperatorContext,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k, _ = emulator
    ctx.checkpointer = ForgettingAgent(forget_fails=True)
    await create_sandbox(ctx)
    await settle(ctx, k)
    k.objects[SANDBOXES, NS, NAME].patch(
        {"metadata": {"deletionTimestamp": "2026-11-23T12:00:00Z"}}
    )
    from kocoon.controllers.checkpoints import CheckpointFailed

    with pytest.raises(CheckpointFailed):
        await sandbox.reconcile(ctx, NS, NAME)
    box = stored(k, SANDBOXES)
    assert box is not None
    assert box["status"]["phase"] == "Terminating"
    assert "kocoon.io/sandbox-cleanup" in box["metadata"]["finalizers"]
    clock.now += timedelta(minutes=6)
    await sandbox.reconcile(ctx, NS, NAME)
    box = stored(k, SANDBOXES)
    assert box is None or "kocoon.io/sandbox-cleanup" not in (
        box["metadata"].get("finalizers") or []
    )
    reasons = [e.get("reason") for e in kmockkit.events(k, NS)]
    assert "CleanupAbandoned" in reasons


async def test_a_failing_reconcile_says_why_in_status_posts_fewer_events_and_backs_off(
    emulator: tuple[kmock.KubernetesEmulator, str],
    ctx: context.OperatorContext,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k, _ = emulator
    await create_sandbox(ctx)
    original = kube_client.request
    attempts: list[float] = []

    async def request(api: Any, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if method == "POST" and path.endswith("/pods"):
            attempts.append(asyncio.get_running_loop().time())
            raise kube_client.ApiError(
                403, "Forbidden", {"message": 'pods "box" is forbidden: exceeded quota: q'}
            )
        return await original(api, method, path, **kwargs)

    monkeypatch.setattr(kube_client, "request", request)
    await sandbox.refresh(ctx, NS, NAME)
    reconciler = sandbox.make_reconciler(ctx)
    reconciler.backoff_base = 0.2
    ctx.reconcilers[sandbox.KIND] = reconciler
    reconciler.trigger(Key(NS, NAME))

    def warnings() -> list[dict[str, Any]]:
        return [e for e in kmockkit.events(k, NS) if e.get("reason") == "ReconcilerError"]

    # Failures at about 0, 0.2, 0.6 and 1.4 s (then 3.0, 6.2…); wait for the 4th one's report.
    for _ in range(150):
        if len(attempts) >= 4 and len(warnings()) >= 3:
            break
        await asyncio.sleep(0.1)
    await reconciler.close()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert 4 <= len(attempts) <= 7, attempts
    assert all(later > earlier * 1.5 for earlier, later in itertools.pairwise(gaps)), gaps
    ready = conditions_of(k)["Ready"]
    assert ready["status"] == "False"
    assert ready["reason"] == "ReconcilerError"
    assert ready["message"] == '403: pods "box" is forbidden: exceeded quota: q'
    assert len(warnings()) == 3  # on the 1st, 2nd and 4th failure, not on every one


async def test_watch_events_feed_the_stores_wake_the_worker_and_a_deletion_leaves_nothing(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_sandbox(ctx)
    runs: list[Key] = []
    real = sandbox.reconcile_key

    async def counting(ctx: context.OperatorContext, key: Key) -> Any:
        runs.append(key)
        return await real(ctx, key)

    reconciler = sandbox.make_reconciler(ctx, resync=1000)
    ctx.reconcilers[sandbox.KIND] = reconciler
    original = sandbox.reconcile_key
    sandbox.reconcile_key = counting  # type: ignore[assignment]
    try:
        body = await kube_client.get(ctx.api, sandbox.SANDBOX, NS, NAME)
        assert body is not None
        sandbox.on_sandbox_event(ctx, "ADDED", body)
        await asyncio.sleep(0.5)
        assert runs == [Key(NS, NAME)]
        assert stored(k, "v1/pods") is not None  # created from what the store held
        # A burst of pod events: one more run, not one per event.
        pod = await kube_client.get(ctx.api, sandbox.POD, NS, NAME)
        assert pod is not None
        for _ in range(20):
            sandbox.on_child_event(ctx, "Pod", "MODIFIED", pod, NAME)
        await asyncio.sleep(0.5)
        assert len(runs) == 2
        # The Sandbox goes: its worker stops, and later child events start nothing.
        sandbox.on_sandbox_event(ctx, "DELETED", body)
        sandbox.on_child_event(ctx, "Pod", "DELETED", pod, NAME)
        await asyncio.sleep(0.1)
        assert len(reconciler) == 0
        assert ctx.store(sandbox.KIND).get(NS, NAME) is None
        assert ctx.store("Pod").get(NS, NAME) is None
    finally:
        sandbox.reconcile_key = original  # type: ignore[assignment]
        await reconciler.close()


class RestartingAgent(RecordingAgent):
    """An agent that cannot be reached until `up` (it is restarting): nothing reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.up = False

    async def checkpoint(self, target: Target, checkpoint_id: str) -> Checkpoint:
        if not self.up:
            from kocoon.controllers.checkpoints import AgentUnreachable

            raise AgentUnreachable("agent on n1 unreachable: connection refused")
        return await super().checkpoint(target, checkpoint_id)


async def _hibernating_with(
    ctx: context.OperatorContext, k: kmock.KubernetesEmulator, agent: RecordingAgent
) -> None:
    ctx.checkpointer = agent
    await create_sandbox(ctx, hibernation="memory")
    await sandbox.reconcile(ctx, NS, NAME)
    mark_pod_running(k)
    await sandbox.reconcile(ctx, NS, NAME)
    k.objects[SANDBOXES, NS, NAME].patch({"spec": {"operatingMode": "Hibernated"}})
    await sandbox.reconcile(ctx, NS, NAME)
    assert phase(k) == "Hibernating"


async def test_an_agent_restarting_during_hibernation_is_waited_for_and_memory_kept(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    from kocoon.controllers.checkpoints import AgentUnreachable

    k, _ = emulator
    agent = RestartingAgent()
    await _hibernating_with(ctx, k, agent)
    with pytest.raises(AgentUnreachable):  # the reconciler asks again, with backoff
        await sandbox.reconcile(ctx, NS, NAME)
    pod = stored(k, "v1/pods")
    assert pod is not None
    assert "kocoon.io/checkpoint-failed" not in (pod["metadata"].get("annotations") or {})

    clock.now += timedelta(seconds=5)
    agent.up = True
    await settle(ctx, k)
    assert phase(k) == "Hibernated"
    assert stored(k, SANDBOXES)["status"]["checkpoint"]["id"] in agent.stored  # type: ignore[index]


async def test_an_agent_unreachable_past_the_grace_hibernates_without_memory(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    from kocoon import lifecycle

    k, _ = emulator
    await _hibernating_with(ctx, k, RestartingAgent())
    clock.now += lifecycle.AGENT_OUTAGE_GRACE
    await sandbox.reconcile(ctx, NS, NAME)  # gives up on memory, says why
    conditions = {c["type"]: c for c in stored(k, SANDBOXES)["status"]["conditions"]}  # type: ignore[index]
    assert conditions["CheckpointAvailable"]["reason"] == "CheckpointFailed"
    assert "unreachable" in conditions["CheckpointAvailable"]["message"]
    await settle(ctx, k)
    assert phase(k) == "Hibernated"
