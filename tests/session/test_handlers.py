"""The AgentSession controller's reconcile against kmock's Kubernetes emulator: no cluster.

The clocks are the controllers' own (`session._now`, `sandbox._now`), moved forward by the
test, so lifetimes, retention and the token's grace period are checked exactly. The session
reads only its stores; `sync` fills them from the emulator as the watches would.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import kmock
import pytest

from kocoon import session_lifecycle as sl
from kocoon.api.sandbox import Checkpoint
from kocoon.controllers import context, sandbox, session
from kocoon.controllers.checkpoints import CheckpointUnavailable, Target
from kocoon.controllers.reconciler import Key, Result, Store
from kocoon.kube import client as kube_client
from kocoon.kube.resources import AGENT_SESSION, EVENT, LEASE, SANDBOX, SECRET, Kind
from tests import kmockkit
from tests.kmockkit import SANDBOXES, SESSIONS, Clock

pytestmark = pytest.mark.handler

NS, NAME = "team", "chat"
RELEASE = "kocoon.io/release-checkpoint"


class RecordingAgent:
    """Checkpoints in memory; records what the operator releases."""

    def __init__(self) -> None:
        self.released: list[str] = []

    async def checkpoint(self, target: Target, checkpoint_id: str) -> Checkpoint:
        return Checkpoint(id=checkpoint_id, node=target.node, size_bytes=1024)

    async def restore(self, target: Target, checkpoint: Checkpoint) -> None:
        raise CheckpointUnavailable("not needed here")

    async def release(self, namespace: str, checkpoint: Checkpoint) -> None:
        self.released.append(checkpoint.id)


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[kmock.KubernetesEmulator, str]]:
    async with kmockkit.emulator(SESSIONS, SANDBOXES) as running:
        yield running


@pytest.fixture
def agent() -> RecordingAgent:
    return RecordingAgent()


@pytest.fixture
async def ctx(
    emulator: tuple[kmock.KubernetesEmulator, str], agent: RecordingAgent
) -> AsyncIterator[context.OperatorContext]:
    async with kmockkit.operator_context(emulator[1], agent) as operator:
        yield operator


@pytest.fixture(autouse=True)
def apply_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    kmockkit.make_apply_create(monkeypatch)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(session, "_now", fake)
    monkeypatch.setattr(sandbox, "_now", fake)
    return fake


def stored(k: kmock.KubernetesEmulator, resource: str, name: str = NAME) -> dict[str, Any] | None:
    return kmockkit.stored(k, resource, NS, name)


def status_of(k: kmock.KubernetesEmulator, resource: str = SESSIONS) -> dict[str, Any]:
    obj = stored(k, resource)
    assert obj is not None
    result: dict[str, Any] = obj.get("status") or {}
    return result


async def create_session(ctx: context.OperatorContext, **spec: Any) -> None:
    body = {
        "apiVersion": "kocoon.io/v1alpha1",
        "kind": "AgentSession",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "uid": "session-uid",
            "generation": 1,
            "creationTimestamp": "2026-11-23T12:00:00Z",
        },
        "spec": {
            "owner": {"user": "alice"},
            "sandboxTemplate": {
                "template": {"image": "busybox", "ports": [{"name": "http", "containerPort": 80}]},
                "runtimeClassName": "runc",
                "workspace": {"size": "1Gi"},
            },
            **spec,
        },
    }
    await kube_client.request(
        ctx.api, "POST", f"/apis/kocoon.io/v1alpha1/namespaces/{NS}/agentsessions", body=body
    )


def bring_pod_up(k: kmock.KubernetesEmulator) -> None:
    pod = stored(k, "v1/pods")
    if pod is not None and (pod.get("status") or {}).get("phase") != "Running":
        k.objects["v1/pods", NS, NAME].patch(
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


WATCHED: list[tuple[str, Kind]] = [
    (session.SESSIONS, AGENT_SESSION),
    (session.SANDBOXES, SANDBOX),
    (session.SECRETS, SECRET),
    (session.LEASES, LEASE),
]


async def sync(ctx: context.OperatorContext) -> None:
    """The stores as the watches would hold them now (fed through the handlers' `cache`)."""
    for store, kind in WATCHED:
        ctx.stores[store] = Store(store)
        for body in await kube_client.list_objects(ctx.api, kind, NS):
            body = {"apiVersion": kind.api_version, "kind": kind.kind, **body}
            session.cache(ctx, store, None, body)


async def reconcile(ctx: context.OperatorContext) -> Result:
    await sync(ctx)
    return await session.reconcile(ctx, NS, NAME)


async def settle(
    ctx: context.OperatorContext, k: kmock.KubernetesEmulator, rounds: int = 4
) -> None:
    """Reconcile the session and its Sandbox in turn, as their watches would."""
    for _ in range(rounds):
        await reconcile(ctx)
        if stored(k, SANDBOXES) is not None:
            await sandbox.reconcile(ctx, NS, NAME)
            bring_pod_up(k)


def deleted(k: kmock.KubernetesEmulator, resource: str) -> bool:
    """Gone, or going (its finalizer still to run)."""
    obj = stored(k, resource)
    return obj is None or bool(obj["metadata"].get("deletionTimestamp"))


def secret_data(k: kmock.KubernetesEmulator) -> dict[str, str]:
    secret = stored(k, "v1/secrets", f"{NAME}-token")
    assert secret is not None
    return {key: base64.b64decode(v).decode() for key, v in (secret.get("data") or {}).items() if v}


async def test_a_session_runs_its_sandbox_and_shares_its_token(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_session(ctx, hibernation="filesystem")
    await settle(ctx, k)
    status = status_of(k)
    assert status["phase"] == "Running"
    assert status["sandboxRef"] == {"name": NAME}
    assert status["tokenSecretRef"] == {"name": f"{NAME}-token", "key": "token"}
    assert status["startTime"].startswith("2026-11-23T12:00:00")
    box = stored(k, SANDBOXES)
    assert box is not None
    assert box["spec"]["hibernation"] == "filesystem"
    assert box["metadata"]["ownerReferences"][0]["uid"] == "session-uid"
    # The Sandbox found the session's Secret and uses it: one token for both routes.
    assert box["status"]["tokenSecretRef"]["name"] == f"{NAME}-token"
    secret = stored(k, "v1/secrets", f"{NAME}-token")
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "AgentSession"


async def test_the_previous_token_lasts_exactly_the_grace_period(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_session(ctx)
    await settle(ctx, k)
    first = secret_data(k)["token"]
    k.objects[SESSIONS, NS, NAME].patch(
        {"metadata": {"annotations": {"kocoon.io/rotate-token": "2026-11-23"}}}
    )
    await reconcile(ctx)
    data = secret_data(k)
    assert data["previousToken"] == first
    assert data["token"] != first
    second = data["token"]

    clock.now += sl.TOKEN_GRACE - timedelta(seconds=1)
    await reconcile(ctx)
    assert secret_data(k) == {"token": second, "previousToken": first}

    clock.now += timedelta(seconds=1)
    await reconcile(ctx)
    assert secret_data(k) == {"token": second}
    accepted = {c["type"]: c for c in status_of(k)["conditions"]}["PreviousTokenAccepted"]
    assert accepted["status"] == "False"


async def test_max_lifetime_ends_the_session_on_the_second(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_session(ctx, maxLifetime="1h")
    await settle(ctx, k)
    usage_before = status_of(k)["usage"]
    assert status_of(k)["phase"] == "Running"

    clock.now += timedelta(minutes=59, seconds=59)
    await settle(ctx, k)
    assert status_of(k)["phase"] == "Running"
    clock.now += timedelta(seconds=1)
    await reconcile(ctx)
    status = status_of(k)
    assert status["phase"] == "Expired"
    assert deleted(k, SANDBOXES)
    assert status["usage"]["idleSeconds"] >= usage_before.get("idleSeconds", 0)
    if stored(k, SANDBOXES) is not None:  # the Sandbox's finalizer runs: it is gone
        patch = {"metadata": {"finalizers": None}}
        await kube_client.merge_patch(ctx.api, SANDBOX, NS, NAME, patch)
    assert stored(k, SANDBOXES) is None
    await reconcile(ctx)
    status = status_of(k)
    assert "sandboxRef" not in status
    assert status["usage"]["idleSeconds"] + status["usage"].get("activeSeconds", 0) >= 3599


async def test_retention_releases_the_memory_checkpoint_through_the_sandbox_controller(
    emulator: tuple[kmock.KubernetesEmulator, str],
    ctx: context.OperatorContext,
    clock: Clock,
    agent: RecordingAgent,
) -> None:
    k, _ = emulator
    await create_session(ctx, hibernation="memory", operatingMode="Hibernated", retention="1h")
    await settle(ctx, k, rounds=6)
    box = stored(k, SANDBOXES)
    assert box is not None
    assert box["status"]["phase"] == "Hibernated"
    k.objects[SANDBOXES, NS, NAME].patch(
        {"status": {"checkpoint": {"id": "chat-0123", "node": "n1"}}}
    )

    clock.now += timedelta(minutes=59)
    await reconcile(ctx)
    box = stored(k, SANDBOXES)
    assert box is not None
    assert RELEASE not in (box["metadata"].get("annotations") or {})
    clock.now += timedelta(minutes=2)
    await reconcile(ctx)
    box = stored(k, SANDBOXES)
    assert box is not None
    assert box["metadata"]["annotations"][RELEASE] == "chat-0123"
    # The session only states its intent: the Sandbox's status is its controller's to write.
    assert box["status"]["checkpoint"]["id"] == "chat-0123"
    assert agent.released == []
    # The Sandbox controller acts on it: released once, through the agent.
    await sandbox.reconcile(ctx, NS, NAME)
    assert agent.released == ["chat-0123"]
    box_status = status_of(k, SANDBOXES)
    assert box_status.get("checkpoint") is None
    assert box_status["phase"] == "Hibernated"
    await settle(ctx, k, rounds=2)
    assert agent.released == ["chat-0123"]


async def test_a_hand_edit_of_the_sandbox_is_reverted_and_a_deleted_token_recreated(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_session(ctx, idleTimeout="10m")
    await settle(ctx, k)
    k.objects[SANDBOXES, NS, NAME].patch(
        {
            "spec": {
                "idleTimeout": "1s",
                "template": {"image": "evil"},
                "shutdownTime": "2030-01-01T00:00:00Z",
            }
        }
    )
    await reconcile(ctx)
    box = stored(k, SANDBOXES)
    assert box is not None
    assert (box["spec"]["idleTimeout"], box["spec"]["template"]["image"]) == ("10m0s", "busybox")
    assert "shutdownTime" not in box["spec"]

    first = secret_data(k)["token"]
    await kube_client.delete(ctx.api, SECRET, NS, f"{NAME}-token")
    assert stored(k, "v1/secrets", f"{NAME}-token") is None
    await reconcile(ctx)
    again = secret_data(k)["token"]
    assert again != first  # a new token: the old one is gone with its Secret
    assert status_of(k)["tokenSecretRef"] == {"name": f"{NAME}-token", "key": "token"}


async def test_the_reconcile_asks_to_run_again_when_the_lifetime_ends(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_session(ctx, maxLifetime="1h")
    await settle(ctx, k)
    clock.now += timedelta(minutes=59, seconds=57)
    result = await reconcile(ctx)
    assert result.requeue_after == pytest.approx(3, abs=0.01)


async def test_a_quiet_session_costs_no_api_request(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_session(ctx, idleTimeout="10m")
    await settle(ctx, k)
    await reconcile(ctx)
    clock.now += timedelta(seconds=5)
    await sync(ctx)
    before = len(list(k))
    result = await session.reconcile(ctx, NS, NAME)
    await session.reconcile(ctx, NS, NAME)
    # Read from the stores, nothing changed: not a GET, not a write.
    assert [(r.method, r.path) for r in list(k)[before:]] == []
    assert result.requeue_after is None  # nothing due: only events or the resync


async def test_a_missing_model_is_named_in_a_condition(
    emulator: tuple[kmock.KubernetesEmulator, str], ctx: context.OperatorContext, clock: Clock
) -> None:
    k, _ = emulator
    await create_session(ctx, models=[{"name": "llama"}, {"name": "qwen"}])
    await sync(ctx)
    session.cache(ctx, session.MODELS, None, {"metadata": {"namespace": NS, "name": "llama"}})
    await session.reconcile(ctx, NS, NAME)
    found = {c["type"]: c for c in status_of(k)["conditions"]}["ModelsAvailable"]
    assert (found["status"], found["reason"]) == ("False", "ModelNotFound")
    assert "spec.models[1]" in found["message"]
    assert "qwen" in found["message"]

    await sync(ctx)
    session.cache(ctx, session.MODELS, None, {"metadata": {"namespace": NS, "name": "qwen"}})
    await session.reconcile(ctx, NS, NAME)
    found = {c["type"]: c for c in status_of(k)["conditions"]}["ModelsAvailable"]
    assert (found["status"], found["reason"]) == ("True", "ModelsFound")
    assert session.sessions_using_model(ctx, NS, "qwen") == [NAME]
    assert session.sessions_using_model(ctx, NS, "other") == []


async def test_a_refused_child_is_a_condition_and_the_rest_goes_on(
    emulator: tuple[kmock.KubernetesEmulator, str],
    ctx: context.OperatorContext,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k, _ = emulator
    await create_session(ctx, maxLifetime="1h")
    original = kube_client.apply

    async def refuse_sandboxes(api: Any, obj: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if obj["kind"] == "Sandbox":
            raise kube_client.ApiError(403, "Forbidden", {"message": "quota exceeded: sandboxes"})
        return await original(api, obj, **kwargs)

    monkeypatch.setattr(kube_client, "apply", refuse_sandboxes)
    first = await reconcile(ctx)
    status = status_of(k)
    children = {c["type"]: c for c in status["conditions"]}["ChildrenReady"]
    assert (children["status"], children["reason"]) == ("False", "ChildApplyFailed")
    assert "Sandbox chat" in children["message"]
    assert "quota exceeded: sandboxes" in children["message"]
    # The rest was done: the token, the Lease, the status.
    assert status["tokenSecretRef"]["name"] == f"{NAME}-token"
    assert stored(k, "coordination.k8s.io/v1/leases", f"kocoon-activity-agentsession-{NAME}")
    assert first.requeue_after == pytest.approx(1)
    # Retried ever less often while it keeps failing; one Warning Event, not one per try.
    clock.now += timedelta(seconds=40)
    assert (await reconcile(ctx)).requeue_after == pytest.approx(40)
    reasons = [e["reason"] for e in await kube_client.list_objects(ctx.api, EVENT, NS)]
    assert reasons.count("ChildApplyFailed") == 1
    # Expiry is not held up by the failing child.
    clock.now += timedelta(hours=1)
    await reconcile(ctx)
    assert status_of(k)["phase"] == "Expired"

    monkeypatch.setattr(kube_client, "apply", original)
    await reconcile(ctx)
    children = {c["type"]: c for c in status_of(k)["conditions"]}["ChildrenReady"]
    assert (children["status"], children["reason"]) == ("True", "ChildrenApplied")


async def test_a_failing_reconcile_says_why_in_status_and_an_event_and_backs_off(
    emulator: tuple[kmock.KubernetesEmulator, str],
    ctx: context.OperatorContext,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k, _ = emulator
    await create_session(ctx)
    await sync(ctx)
    calls: list[int] = []

    def failing(observed: sl.Observed) -> sl.Decision:
        calls.append(1)
        raise kube_client.ApiError(500, "Internal", {"message": "etcdserver: request timed out"})

    monkeypatch.setattr(session.sl, "decide", failing)
    worker = session.reconciler(ctx)
    worker.backoff_base = 0.05
    worker.trigger(Key(NS, NAME))
    ready = None
    for _ in range(100):
        await asyncio.sleep(0.05)
        ready = {c["type"]: c for c in status_of(k).get("conditions") or []}.get("Ready")
        if ready is not None and ready["reason"] == "ReconcilerError":
            break
    assert ready is not None
    assert ready["status"] == "False"
    assert "etcdserver: request timed out" in ready["message"]
    await asyncio.sleep(0.3)
    assert 2 <= len(calls) < 10  # retried, with a growing pause
    reasons = [e["reason"] for e in await kube_client.list_objects(ctx.api, EVENT, NS)]
    assert "ReconcilerError" in reasons
    await worker.close()
