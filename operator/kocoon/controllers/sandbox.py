"""The Sandbox controller: gather what is, ask the life cycle what next, do it, write status.

Every trigger — a change to the Sandbox, its pod or its activity Lease, and a periodic
timer — runs the same level-based `reconcile`, one at a time per sandbox.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kocoon import lifecycle
from kocoon.api.common import SecretKeyReference
from kocoon.api.conditions import ConditionType, Reason, SandboxPhase
from kocoon.api.sandbox import Sandbox, SandboxStatus, Usage
from kocoon.builders import activity, gpu, names, network, storage, token
from kocoon.builders import pod as pod_builder
from kocoon.builders.context import Identity
from kocoon.controllers import common, failpoints, metrics, observe
from kocoon.controllers.checkpoints import (
    RESTORES_INTO_POD,
    CheckpointFailed,
    CheckpointUnavailable,
    Target,
)
from kocoon.controllers.context import OperatorContext, current, reconcile_interval
from kocoon.kube import client, events
from kocoon.kube.resources import GROUP, LEASE, POD, SANDBOX, SECRET, VERSION
from kocoon.status import ConditionUpdate, merge_conditions, status_patch

log = logging.getLogger(__name__)
KIND = SANDBOX.kind


def _now() -> datetime:
    return datetime.now(UTC)


def _running_since(status: SandboxStatus) -> datetime | None:
    for condition in status.conditions:
        if condition.type == ConditionType.READY and condition.status == "True":
            return condition.last_transition_time
    return None


# Usage is written at most this often (or at a phase change): every status write is a watch
# event, and accounting on each of them would keep the sandbox reconciling forever.
ACCOUNTING_STEP_SECONDS = 5.0


def account_usage(
    status: SandboxStatus, observed: lifecycle.Observed, gpu_count: int, phase_changes: bool
) -> Usage:
    """Add the time since the last accounting to the bucket of the state the sandbox was in."""
    usage = status.usage or Usage()
    now = observed.now
    since = usage.accounted_until or now
    elapsed = max(0.0, (now - since).total_seconds())
    if (
        usage.accounted_until is not None
        and elapsed < ACCOUNTING_STEP_SECONDS
        and not phase_changes
    ):
        return usage
    update: dict[str, Any] = {"accounted_until": now}
    if status.phase is SandboxPhase.RUNNING:
        bucket = "active_seconds" if lifecycle.is_active(observed) else "idle_seconds"
        update[bucket] = round(getattr(usage, bucket) + elapsed, 3)
        update["gpu_seconds"] = round(usage.gpu_seconds + elapsed * gpu_count, 3)
    elif status.phase is SandboxPhase.HIBERNATED:
        update["hibernated_seconds"] = round(usage.hibernated_seconds + elapsed, 3)
    return usage.model_copy(update=update)


async def ensure_token(ctx: OperatorContext, owner: Identity) -> None:
    """Create the token Secret once; it is never rewritten, so the token stays valid."""
    try:
        await client.request(
            ctx.api,
            "POST",
            SECRET.path(owner.namespace),
            body=token.token_secret(owner, token.new_token()),
        )
    except client.ApiError as error:
        if error.status != 409:
            raise


async def ensure_children(ctx: OperatorContext, owner: Identity, sandbox: Sandbox) -> None:
    await ensure_token(ctx, owner)
    spec = sandbox.spec
    children = [
        storage.workspace_claim(owner, spec),
        gpu.claim_template(owner, spec.gpu),
        network.service(owner, spec) if spec.template.ports else None,
        network.network_policy(owner, spec, ctx.build),
        activity.activity_lease(owner),
    ]
    for child in children:
        if child is not None:
            await client.apply(ctx.api, child)


async def _act(
    ctx: OperatorContext,
    action: lifecycle.Action,
    owner: Identity,
    sandbox: Sandbox,
    status: SandboxStatus,
    pod: dict[str, Any] | None,
    body: dict[str, Any],
) -> None:
    """Carry out one action; may update `status` (checkpoint, conditions) in place."""
    view = observe.pod_view(pod)
    if action is lifecycle.Action.CREATE_POD:
        checkpoint = status.checkpoint if status.phase is SandboxPhase.WAKING else None
        manifest = pod_builder.pod(
            owner,
            sandbox.spec,
            ctx.build,
            restore_from=checkpoint.id if checkpoint else None,
            node_name=checkpoint.node if checkpoint else None,
            hold_for_restore=checkpoint is not None and checkpoint.driver in RESTORES_INTO_POD,
        )
        try:
            await client.request(ctx.api, "POST", POD.path(owner.namespace), body=manifest)
        except client.ApiError as error:
            if error.status != 409:  # 409: it exists already; the next reconcile sees it
                raise
    elif action is lifecycle.Action.DELETE_POD and view is not None:
        await client.delete(
            ctx.api, POD, owner.namespace, names.pod_name(owner.name), preconditions_uid=view.uid
        )
    elif action is lifecycle.Action.CHECKPOINT and view is not None:
        await _checkpoint(ctx, owner, status, pod or {}, view, body)
    elif action is lifecycle.Action.RESTORE and view is not None:
        await _restore(ctx, owner, status, pod or {}, view, body)
    elif action is lifecycle.Action.RELEASE_CHECKPOINT and status.checkpoint is not None:
        await _release(ctx, owner, status)
    elif action is lifecycle.Action.CLEAR_WAKE_REQUEST:
        await client.merge_patch(
            ctx.api,
            LEASE,
            owner.namespace,
            names.activity_lease_name(owner.name),
            {"metadata": {"annotations": {names.WAKE_REQUESTED_ANNOTATION: None}}},
        )
    elif action is lifecycle.Action.DELETE_SANDBOX:
        await client.delete(ctx.api, SANDBOX, owner.namespace, owner.name)


def _target(owner: Identity, pod: dict[str, Any], view: lifecycle.PodView) -> Target:
    return Target(
        namespace=owner.namespace,
        sandbox=owner.name,
        pod=names.pod_name(owner.name),
        node=view.node or "",
        container_id=observe.container_id(pod),
        pod_ip=view.ip,
        pod_uid=view.uid,
        container=names.CONTAINER_NAME,
        image_digest=observe.image_digest(pod),
    )


async def _checkpoint(
    ctx: OperatorContext,
    owner: Identity,
    status: SandboxStatus,
    pod: dict[str, Any],
    view: lifecycle.PodView,
    body: dict[str, Any],
) -> None:
    checkpoint_id = lifecycle.checkpoint_id(owner.name, view.uid)
    started = _now()
    try:
        checkpoint = await ctx.checkpointer.checkpoint(_target(owner, pod, view), checkpoint_id)
    except (CheckpointUnavailable, CheckpointFailed) as error:
        reason = Reason.CHECKPOINT_FAILED
        message = f"memory checkpoint not taken ({error}); hibernating without memory"
        metrics.CHECKPOINT_FAILURES.labels(kind=type(error).__name__).inc()
        await client.merge_patch(
            ctx.api,
            POD,
            owner.namespace,
            names.pod_name(owner.name),
            {"metadata": {"annotations": {observe.CHECKPOINT_FAILED_ANNOTATION: str(error)[:512]}}},
        )
        status.conditions = merge_conditions(
            status.conditions,
            (ConditionUpdate(ConditionType.CHECKPOINT_AVAILABLE, False, reason, message),),
            body["metadata"].get("generation", 0),
            _now(),
        )
        await events.post(ctx.api, body, events.WARNING, reason, message)
        return
    metrics.CHECKPOINT_SECONDS.observe((_now() - started).total_seconds())
    metrics.CHECKPOINT_BYTES.observe(checkpoint.size_bytes or 0)
    if status.checkpoint is not None and status.checkpoint.id != checkpoint.id:
        await _release(ctx, owner, status)  # an older one; only the newest is kept
    status.checkpoint = checkpoint
    message = f"checkpoint {checkpoint.id} on {checkpoint.node} ({checkpoint.size_bytes} bytes)"
    status.conditions = merge_conditions(
        status.conditions,
        (
            ConditionUpdate(
                ConditionType.CHECKPOINT_AVAILABLE, True, Reason.CHECKPOINT_STORED, message
            ),
        ),
        body["metadata"].get("generation", 0),
        _now(),
    )
    await events.post(ctx.api, body, events.NORMAL, Reason.CHECKPOINT_STORED, message)


async def _restore(
    ctx: OperatorContext,
    owner: Identity,
    status: SandboxStatus,
    pod: dict[str, Any],
    view: lifecycle.PodView,
    body: dict[str, Any],
) -> None:
    assert status.checkpoint is not None
    checkpoint = status.checkpoint
    generation = body["metadata"].get("generation", 0)
    pod_name = names.pod_name(owner.name)
    try:
        if view.restored != checkpoint.id:  # else: restored before an operator restart
            await ctx.checkpointer.restore(_target(owner, pod, view), checkpoint)
            failpoints.hit("restore:before-mark")
            if view.held:
                # Recorded before the checkpoint is released: from here on the pod runs the
                # workload, and a restart must not take it for an empty placeholder.
                await client.merge_patch(
                    ctx.api,
                    POD,
                    owner.namespace,
                    pod_name,
                    {"metadata": {"annotations": {names.RESTORED_ANNOTATION: checkpoint.id}}},
                )
        failpoints.hit("restore:before-release")
        reason, ok = Reason.CHECKPOINT_STORED, True
        message = f"memory restored from checkpoint {checkpoint.id}"
    except (CheckpointUnavailable, CheckpointFailed) as error:
        reason, ok = Reason.WOKE_COLD, False
        message = f"restore of {checkpoint.id} failed ({error}); woke cold from the workspace"
        metrics.RESTORE_FAILURES.inc()
        if view.held:
            # Its container holds the place and runs nothing: a new pod starts cold.
            await client.delete(ctx.api, POD, owner.namespace, pod_name, preconditions_uid=view.uid)
    # Either way this checkpoint is spent: a later restore would bring back stale memory.
    await _release(ctx, owner, status)
    status.conditions = merge_conditions(
        status.conditions,
        (
            ConditionUpdate(
                ConditionType.CHECKPOINT_AVAILABLE,
                False,
                Reason.NO_CHECKPOINT if ok else reason,
                message,
            ),
        ),
        generation,
        _now(),
    )
    await events.post(
        ctx.api,
        body,
        events.NORMAL if ok else events.WARNING,
        "Restored" if ok else reason,
        message,
    )


async def _release(ctx: OperatorContext, owner: Identity, status: SandboxStatus) -> None:
    checkpoint = status.checkpoint
    if checkpoint is None:
        return
    # CheckpointUnavailable: no agent serves that node, so nothing there can leak.
    with contextlib.suppress(CheckpointUnavailable):
        await ctx.checkpointer.release(owner.namespace, checkpoint)
    status.checkpoint = None


async def reconcile(ctx: OperatorContext, namespace: str, name: str) -> None:
    await common.reconcile_locked(ctx, SANDBOX, namespace, name, _reconcile)


async def _reconcile(ctx: OperatorContext, body: dict[str, Any]) -> None:
    metadata = body["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    generation = int(metadata.get("generation", 0))
    now = _now()
    try:
        sandbox = Sandbox.model_validate(body)
    except ValidationError as error:
        await common.report_invalid(ctx, SANDBOX, body, error)
        return
    owner = Identity(name=name, namespace=namespace, uid=metadata["uid"])
    status = (sandbox.status or SandboxStatus()).model_copy(deep=True)
    if status.observed_generation != generation or status.phase is None:
        await ensure_children(ctx, owner, sandbox)
    pod = await client.get(ctx.api, POD, namespace, names.pod_name(name))
    lease = await client.get(ctx.api, LEASE, namespace, names.activity_lease_name(name))
    runtime = pod_builder.runtime_class(sandbox.spec, ctx.build)
    observed = lifecycle.Observed(
        name=name,
        spec=sandbox.spec,
        generation=generation,
        created=observe.parse_time(metadata.get("creationTimestamp")) or now,
        phase=status.phase,
        checkpoint=status.checkpoint,
        pod=observe.pod_view(pod),
        activity=observe.activity(lease),
        now=now,
        memory_checkpoint_supported=ctx.config.can_checkpoint_memory(runtime),
        running_since=_running_since(status),
    )
    decision = lifecycle.decide(observed)
    gpu_count = sandbox.spec.gpu.count if sandbox.spec.gpu else 0
    status.usage = account_usage(status, observed, gpu_count, decision.phase != status.phase)
    for action in decision.actions:
        await _act(ctx, action, owner, sandbox, status, pod, body)
        failpoints.hit(f"after:{action.value}")
    if decision.phase != status.phase:
        failpoints.hit(f"before-status:{decision.phase.value}")
    await _write_status(ctx, body, sandbox, status, decision, observed, owner)


async def _write_status(
    ctx: OperatorContext,
    body: dict[str, Any],
    sandbox: Sandbox,
    status: SandboxStatus,
    decision: lifecycle.Decision,
    observed: lifecycle.Observed,
    owner: Identity,
) -> None:
    now = observed.now
    previous = status.phase
    if decision.phase != previous:
        if previous is SandboxPhase.WAKING and decision.phase is SandboxPhase.RUNNING:
            usage = status.usage or Usage()
            latency = round((now - (status.phase_since or now)).total_seconds(), 3)
            status.usage = usage.model_copy(
                update={"wake_count": usage.wake_count + 1, "last_wake_latency_seconds": latency}
            )
            metrics.WAKE_SECONDS.observe(latency)
        status.phase = decision.phase
        status.phase_since = now
        metrics.TRANSITIONS.labels(phase=decision.phase.value).inc()
    before = {c.type: (c.status, c.reason) for c in status.conditions}
    status.conditions = merge_conditions(
        status.conditions, decision.conditions, observed.generation, now
    )
    # Worth an Event: a new phase, or a condition that changed for the decision's reason.
    conditions_changed = any(
        before.get(u.type) != ("True" if u.status else "False", u.reason)
        for u in decision.conditions
        if u.reason == decision.reason
    )
    status.observed_generation = observed.generation
    pod = observed.pod
    awake = pod is not None and not pod.deleting
    status.pod_name = names.pod_name(owner.name) if awake else None
    status.node_name = pod.node if awake and pod else None
    status.pod_ip = pod.ip if awake and pod else None
    status.port = _router_port(sandbox)
    if sandbox.spec.template.ports:
        status.service_fqdn = network.service_fqdn(owner, ctx.build)
    status.endpoint = f"/sandboxes/{owner.namespace}/{owner.name}/"
    status.token_secret_ref = SecretKeyReference(
        name=token.token_secret_name(owner.name), key=token.TOKEN_KEY
    )
    if observed.activity.last_request is not None:
        status.last_activity_time = observed.activity.last_request
    patch = status_patch(body.get("status") or {}, status.to_wire())
    if patch is not None:
        await client.merge_patch(
            ctx.api, SANDBOX, owner.namespace, owner.name, patch, subresource="status"
        )
    if decision.reason is not None and (decision.phase != previous or conditions_changed):
        event_type = events.WARNING if decision.reason is Reason.UNSCHEDULABLE else events.NORMAL
        message = f"{previous or 'New'} → {decision.phase}: {decision.message}".strip()
        log.info(message, extra={"sandbox": f"{owner.namespace}/{owner.name}"})
        await events.post(ctx.api, body, event_type, decision.reason, message)


def _router_port(sandbox: Sandbox) -> int | None:
    ports = sandbox.spec.template.ports
    exposed = sandbox.spec.network.exposed_ports
    for port in ports:
        if not exposed or port.name == exposed[0]:
            return port.container_port
    return None


# --- kopf wiring ------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "sandboxes")
async def sandbox_changed(type: str, namespace: str | None, name: str, **_: Any) -> None:
    if type != "DELETED" and namespace:
        await reconcile(current(), namespace, name)


@kopf.timer(GROUP, VERSION, "sandboxes", interval=reconcile_interval(), initial_delay=1)
async def sandbox_tick(namespace: str | None, name: str, **_: Any) -> None:
    if namespace:
        await reconcile(current(), namespace, name)


@kopf.on.event("v1", "pods", labels={names.SANDBOX_LABEL: kopf.PRESENT})
async def pod_changed(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    if namespace:
        await reconcile(current(), namespace, labels[names.SANDBOX_LABEL])


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels={names.TARGET_KIND_LABEL: "sandbox"})
async def activity_changed(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    if namespace and names.TARGET_NAME_LABEL in labels:
        await reconcile(current(), namespace, labels[names.TARGET_NAME_LABEL])


@kopf.on.delete(GROUP, VERSION, "sandboxes")
async def sandbox_deleted(
    namespace: str | None, name: str, status: Mapping[str, Any], **_: Any
) -> None:
    """Release the checkpoint before the Sandbox goes; children go by garbage collection."""
    ctx = current()
    if namespace is None:
        return
    async with ctx.lock(KIND, namespace, name):
        parsed = SandboxStatus.model_validate(dict(status or {}))
        if parsed.checkpoint is not None:
            try:
                await ctx.checkpointer.release(namespace, parsed.checkpoint)
            except CheckpointFailed as error:
                raise kopf.TemporaryError(f"releasing checkpoint: {error}", delay=10) from error
            except CheckpointUnavailable:
                pass
    ctx.forget(KIND, namespace, name)
