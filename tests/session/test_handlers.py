"""The AgentSession controller's reconcile against kmock's Kubernetes emulator: no cluster.

The clocks are the controllers' own (`session._now`, `sandbox._now`), moved forward by the
test, so lifetimes, retention and the token's grace period are checked exactly.
"""

from __future__ import annotations

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
from kocoon.kube import client as kube_client
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


async def settle(
    ctx: context.OperatorContext, k: kmock.KubernetesEmulator, rounds: int = 4
) -> None:
    """Reconcile the session and its Sandbox in turn, as their watches would."""
    for _ in range(rounds):
        await session.reconcile(ctx, NS, NAME)
        if stored(k, SANDBOXES) is not None:
            await sandbox.reconcile(ctx, NS, NAME)
            bring_pod_up(k)


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
    await session.reconcile(ctx, NS, NAME)
    data = secret_data(k)
    assert data["previousToken"] == first
    assert data["token"] != first
    second = data["token"]

    clock.now += sl.TOKEN_GRACE - timedelta(seconds=1)
    await session.reconcile(ctx, NS, NAME)
    assert secret_data(k) == {"token": second, "previousToken": first}

    clock.now += timedelta(seconds=1)
    await session.reconcile(ctx, NS, NAME)
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
    await session.reconcile(ctx, NS, NAME)
    status = status_of(k)
    assert status["phase"] == "Expired"
    assert stored(k, SANDBOXES) is None
    assert status["usage"]["idleSeconds"] >= usage_before.get("idleSeconds", 0)
    await session.reconcile(ctx, NS, NAME)
    status = status_of(k)
    assert "sandboxRef" not in status
    assert status["usage"]["idleSeconds"] + status["usage"].get("activeSeconds", 0) >= 3599


async def test_retention_asks_the_sandbox_to_release_its_memory_checkpoint(
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
    await session.reconcile(ctx, NS, NAME)
    box = stored(k, SANDBOXES)
    assert box is not None
    assert RELEASE not in (box["metadata"].get("annotations") or {})
    clock.now += timedelta(minutes=2)
    await session.reconcile(ctx, NS, NAME)
    box = stored(k, SANDBOXES)
    assert box is not None
    assert box["metadata"]["annotations"][RELEASE] == "chat-0123"
    # The session only states its intent: the Sandbox's status is its controller's to write.
    assert box["status"]["checkpoint"]["id"] == "chat-0123"
    assert agent.released == []
