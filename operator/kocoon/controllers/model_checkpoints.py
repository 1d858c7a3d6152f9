"""`wakeStrategy: checkpoint` for model replicas: checkpoint a ready replica through the node
agent before it scales to zero, restore it into the next wake's held pod, release it.

The same agent, drivers, store and encryption as a Sandbox's memory hibernation
(`checkpoints.py`); the checkpoint is kept in `status.checkpoint` and, unlike a Sandbox's,
restored on every wake (an engine's memory is its loaded model, not user state) until the
pod template changes. What cannot work says so in a condition and the replica wakes cold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kocoon import contract
from kocoon.api.conditions import ConditionType, Reason
from kocoon.api.model import ModelDeploymentSpec, ModelDeploymentStatus
from kocoon.builders import names
from kocoon.builders.context import BuildSettings, Identity
from kocoon.controllers import failpoints, metrics
from kocoon.controllers.checkpoints import CheckpointFailed, CheckpointUnavailable, Target
from kocoon.controllers.context import OperatorContext
from kocoon.controllers.observe import CHECKPOINT_FAILED_ANNOTATION
from kocoon.decide import model as decide
from kocoon.kube import client, events
from kocoon.kube.resources import POD
from kocoon.status import ConditionUpdate

log = logging.getLogger(__name__)

# What a held wake pod's engine container runs until the agent restores the checkpoint beside
# it, per engine. llama-server's image has no shell for the default hold command: the server
# itself in router mode (no model loaded) on a loopback port holds the place, stops on SIGTERM.
HOLD_COMMANDS: Mapping[str, tuple[str, ...]] = {
    "llamacpp": (
        "llama-server",
        "--models-dir",
        "/tmp",
        "--host",
        "127.0.0.1",
        "--port",
        str(contract.ENGINE_PORT + 1),
    ),
}


def hold_settings(spec: ModelDeploymentSpec, settings: BuildSettings) -> BuildSettings:
    """The build settings of a held wake pod: the engine's own hold command where it has one."""
    command = HOLD_COMMANDS.get(spec.engine.type)
    if command is None:
        return settings
    return dataclasses.replace(settings, restore_hold_command=command)


def agent_name(owner: Identity) -> str:
    """The name the agent keeps the deployment's checkpoints and data key under."""
    return f"kocoon-model-{owner.name}"


def _engine_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == contract.ENGINE_CONTAINER:
            return dict(status)
    return {}


def target(owner: Identity, replica: decide.Replica, pod: Mapping[str, Any]) -> Target:
    engine = _engine_status(pod)
    container_id = str(engine.get("containerID") or "").split("://", 1)[-1] or None
    return Target(
        namespace=owner.namespace,
        sandbox=agent_name(owner),
        pod=replica.name,
        node=replica.node or "",
        container_id=container_id,
        pod_ip=replica.ip,
        pod_uid=replica.uid,
        container=contract.ENGINE_CONTAINER,
        image_digest=str(engine.get("imageID") or "") or None,
    )


def _now() -> datetime:
    return datetime.now(UTC)


async def take(
    ctx: OperatorContext,
    owner: Identity,
    replica: decide.Replica,
    pod: Mapping[str, Any],
    template_hash: str,
    status: ModelDeploymentStatus,
    body: dict[str, Any],
) -> ConditionUpdate:
    """Checkpoint a ready replica; on failure mark it, so it scales down without one."""
    checkpoint_id = decide.checkpoint_id(owner.name, replica.uid, template_hash)
    started = _now()
    try:
        checkpoint = await ctx.checkpointer.checkpoint(target(owner, replica, pod), checkpoint_id)
    except (CheckpointUnavailable, CheckpointFailed) as error:
        message = f"checkpoint of {replica.name} not taken ({error}); the next wake is cold"
        metrics.CHECKPOINT_FAILURES.labels(kind=type(error).__name__).inc()
        await client.merge_patch(
            ctx.api,
            POD,
            owner.namespace,
            replica.name,
            {"metadata": {"annotations": {CHECKPOINT_FAILED_ANNOTATION: str(error)[:512]}}},
        )
        await events.post(ctx.api, body, events.WARNING, Reason.CHECKPOINT_FAILED, message)
        return ConditionUpdate(
            ConditionType.CHECKPOINT_AVAILABLE, False, Reason.CHECKPOINT_FAILED, message
        )
    failpoints.hit("model:after-checkpoint")
    seconds = (_now() - started).total_seconds()
    metrics.CHECKPOINT_SECONDS.observe(seconds)
    metrics.CHECKPOINT_BYTES.observe(checkpoint.size_bytes or 0)
    if status.checkpoint is not None and status.checkpoint.id != checkpoint.id:
        await release(ctx, owner, status)  # only the newest is kept
    status.checkpoint = checkpoint
    message = (
        f"checkpoint {checkpoint.id} of {replica.name} on {checkpoint.node}"
        f" ({checkpoint.size_bytes} bytes, {seconds:.2f} s)"
    )
    await events.post(ctx.api, body, events.NORMAL, Reason.CHECKPOINT_STORED, message)
    return ConditionUpdate(
        ConditionType.CHECKPOINT_AVAILABLE, True, Reason.CHECKPOINT_STORED, message
    )


async def restore(
    ctx: OperatorContext,
    owner: Identity,
    replica: decide.Replica,
    pod: Mapping[str, Any],
    status: ModelDeploymentStatus,
    body: dict[str, Any],
) -> ConditionUpdate:
    """Restore the checkpoint into a held wake pod, then mark the pod restored (it serves from
    then on). A restore that fails deletes the pod and releases the checkpoint: the next pod
    starts the engine cold."""
    checkpoint = status.checkpoint
    assert checkpoint is not None
    started = _now()
    try:
        await ctx.checkpointer.restore(target(owner, replica, pod), checkpoint)
        failpoints.hit("model:restore:before-mark")
        await client.merge_patch(
            ctx.api,
            POD,
            owner.namespace,
            replica.name,
            {"metadata": {"annotations": {names.RESTORED_ANNOTATION: checkpoint.id}}},
        )
    except (CheckpointUnavailable, CheckpointFailed) as error:
        metrics.RESTORE_FAILURES.inc()
        message = f"restore of {checkpoint.id} failed ({error}); waking cold"
        await client.delete(
            ctx.api, POD, owner.namespace, replica.name, preconditions_uid=replica.uid
        )
        await release(ctx, owner, status)
        await events.post(ctx.api, body, events.WARNING, Reason.WOKE_COLD, message)
        return ConditionUpdate(ConditionType.CHECKPOINT_AVAILABLE, False, Reason.WOKE_COLD, message)
    message = (
        f"restored {checkpoint.id} into {replica.name} in"
        f" {(_now() - started).total_seconds():.2f} s"
    )
    await events.post(ctx.api, body, events.NORMAL, "Restored", message)
    return ConditionUpdate(
        ConditionType.CHECKPOINT_AVAILABLE,
        True,
        Reason.CHECKPOINT_STORED,
        f"checkpoint {checkpoint.id} on {checkpoint.node}; {message}",
    )


async def release(ctx: OperatorContext, owner: Identity, status: ModelDeploymentStatus) -> None:
    checkpoint = status.checkpoint
    if checkpoint is None:
        return
    # CheckpointUnavailable: no agent serves that node, so nothing there can leak.
    with contextlib.suppress(CheckpointUnavailable):
        await ctx.checkpointer.release(owner.namespace, checkpoint)
    log.info("released checkpoint %s", checkpoint.id, extra={"modeldeployment": owner.name})
    status.checkpoint = None
