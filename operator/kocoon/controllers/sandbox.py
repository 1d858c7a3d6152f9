"""The Sandbox controller: gather what is, ask the life cycle what next, do it, write status.

It runs on the reconcile core (`controllers/reconciler.py`): kopf `on.event` handlers feed the
stores (the Sandbox, its pod, its activity Lease and its other children) and wake the
Sandbox's worker; the worker reads the stores, never GETs per reconcile, and sleeps until the
next deadline the life cycle names (idle, shutdown) or the resync. Every reconcile converges
every child, so a child deleted by hand is back within one reconcile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kocoon import contract, defaults, lifecycle
from kocoon.api.common import SecretKeyReference
from kocoon.api.conditions import ConditionType, Reason, SandboxPhase
from kocoon.api.sandbox import Sandbox, SandboxStatus, Usage
from kocoon.builders import activity, gpu, names, network, storage, token
from kocoon.builders import pod as pod_builder
from kocoon.builders.context import Identity
from kocoon.controllers import common, failpoints, metrics, observe
from kocoon.controllers.checkpoints import (
    RESTORES_INTO_POD,
    AgentUnreachable,
    CheckpointFailed,
    CheckpointUnavailable,
    Target,
)
from kocoon.controllers.context import OperatorContext, resync_seconds
from kocoon.controllers.reconciler import Key, Reconciler, Result
from kocoon.kube import client, events
from kocoon.kube.resources import (
    LEASE,
    NETWORK_POLICY,
    POD,
    PVC,
    RESOURCE_CLAIM_TEMPLATE,
    SANDBOX,
    SECRET,
    SERVICE,
    Kind,
)
from kocoon.status import ConditionUpdate, merge_conditions, status_patch

log = logging.getLogger(__name__)
KIND = SANDBOX.kind
# The Sandbox's own finalizer (kopf's `kocoon.io/finalizer` is kopf's, for kinds with
# kopf change handlers; kopf removes it from Sandboxes, which have none).
FINALIZER = "kocoon.io/sandbox-cleanup"
# After this long failing to clean up a deleted Sandbox (agent down…), give up with a Warning
# Event and let it go (docs/lifecycle.md, "Deletion").
CLEANUP_GIVE_UP_ENV = "KOCOON_CLEANUP_GIVE_UP_SECONDS"
CLEANUP_GIVE_UP_SECONDS = 300.0
# On each child: a digest of the manifest last applied; a child whose digest differs (or that
# is missing) is applied again.
APPLIED_ANNOTATION = "kocoon.io/applied"
# Children whose kinds are watched into stores (registry.py): applied only when missing or
# changed. ResourceClaimTemplates (GPU sandboxes only) are not watched: applied every
# reconcile (server-side apply, a no-op when unchanged), deleted when a spec change drops them.
WATCHED_KINDS = frozenset({SERVICE.kind, NETWORK_POLICY.kind, PVC.kind, LEASE.kind})


def _now() -> datetime:
    return datetime.now(UTC)


def cleanup_give_up() -> timedelta:
    return timedelta(seconds=float(os.environ.get(CLEANUP_GIVE_UP_ENV, CLEANUP_GIVE_UP_SECONDS)))


def _running_since(status: SandboxStatus) -> datetime | None:
    for condition in status.conditions:
        if condition.type == ConditionType.READY and condition.status == "True":
            return condition.last_transition_time
    return None


# Usage is written at a phase change, and while running (counting active, idle and GPU time)
# at most this often. A Hibernated or Expired sandbox with nothing new writes nothing: its
# hibernated time is added when it leaves the phase.
ACCOUNTING_STEP_SECONDS = 60.0


def account_usage(
    status: SandboxStatus, observed: lifecycle.Observed, gpu_count: int, phase_changes: bool
) -> Usage:
    """Add the time since the last accounting to the bucket of the state the sandbox was in."""
    return accounted(status, observed.now, lifecycle.is_active(observed), gpu_count, phase_changes)


def accounted(
    status: SandboxStatus, now: datetime, active: bool, gpu_count: int, phase_changes: bool
) -> Usage:
    usage = status.usage or Usage()
    since = usage.accounted_until or now
    elapsed = max(0.0, (now - since).total_seconds())
    counting = status.phase is SandboxPhase.RUNNING
    quiet = not counting or elapsed < ACCOUNTING_STEP_SECONDS
    if usage.accounted_until is not None and not phase_changes and quiet:
        return usage
    update: dict[str, Any] = {"accounted_until": now}
    if status.phase is SandboxPhase.RUNNING:
        bucket = "active_seconds" if active else "idle_seconds"
        update[bucket] = round(getattr(usage, bucket) + elapsed, 3)
        update["gpu_seconds"] = round(usage.gpu_seconds + elapsed * gpu_count, 3)
    elif status.phase is SandboxPhase.HIBERNATED:
        update["hibernated_seconds"] = round(usage.hibernated_seconds + elapsed, 3)
    return usage.model_copy(update=update)


# --- children -----------------------------------------------------------------------------


def desired_children(
    ctx: OperatorContext, owner: Identity, sandbox: Sandbox
) -> list[tuple[Kind, str, dict[str, Any] | None]]:
    """Every child but the token Secret: (kind, name, manifest or None when not wanted)."""
    spec = sandbox.spec
    name = owner.name
    return [
        (PVC, names.workspace_claim_name(name), storage.workspace_claim(owner, spec)),
        (
            RESOURCE_CLAIM_TEMPLATE,
            names.gpu_claim_template_name(name),
            gpu.claim_template(owner, spec.gpu),
        ),
        (
            SERVICE,
            names.service_name(name),
            network.service(owner, spec) if spec.template.ports else None,
        ),
        (
            NETWORK_POLICY,
            names.network_policy_name(name),
            network.network_policy(owner, spec, ctx.build),
        ),
        (LEASE, names.activity_lease_name(name), activity.activity_lease(owner)),
    ]


# Children never deleted when no longer wanted: a workspace holds the user's data.
KEPT_WHEN_UNWANTED = frozenset({PVC.kind})


def _digest(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def _stamped(manifest: dict[str, Any], digest: str) -> dict[str, Any]:
    metadata = manifest["metadata"]
    annotations = {**(metadata.get("annotations") or {}), APPLIED_ANNOTATION: digest}
    return {**manifest, "metadata": {**metadata, "annotations": annotations}}


def _applied_digest(live: Mapping[str, Any] | None) -> str | None:
    if live is None:
        return None
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(APPLIED_ANNOTATION)
    return str(value) if value else None


async def ensure_token(ctx: OperatorContext, owner: Identity) -> None:
    """Create the token Secret when it is missing; it is never rewritten, so the token stays
    valid (an AgentSession's Sandbox finds its session's Secret under the same name)."""
    name = token.token_secret_name(owner.name)
    if ctx.store(SECRET.kind).get(owner.namespace, name) is not None:
        return
    try:
        answer = await client.request(
            ctx.api,
            "POST",
            SECRET.path(owner.namespace),
            body=token.token_secret(owner, token.new_token()),
        )
    except client.ApiError as error:
        if error.status != 409:
            raise
        return
    ctx.store(SECRET.kind).upsert(answer)


async def converge_children(
    ctx: OperatorContext, owner: Identity, sandbox: Sandbox, spec_changed: bool
) -> ConditionUpdate:
    """Apply every wanted child that is missing or differs from its manifest; delete the
    unwanted ones. A child the API refuses (quota, 422, RBAC) is reported, not raised: it
    must not stop hibernation, wake or expiry."""
    failures: list[str] = []
    try:
        await ensure_token(ctx, owner)
    except client.ApiError as error:
        if common.namespace_terminating(error):
            raise
        failures.append(
            f"Secret {token.token_secret_name(owner.name)}: {common.error_message(error)}"
        )
    for kind, name, manifest in desired_children(ctx, owner, sandbox):
        store = ctx.store(kind.kind)
        live = store.get(owner.namespace, name)
        try:
            if manifest is None:
                if kind.kind in KEPT_WHEN_UNWANTED:
                    continue
                if live is not None or spec_changed:
                    await client.delete(ctx.api, kind, owner.namespace, name)
                    store.remove(owner.namespace, name)
                continue
            digest = _digest(manifest)
            if kind.kind in WATCHED_KINDS and _applied_digest(live) == digest:
                continue
            answer = await client.apply(ctx.api, _stamped(manifest, digest))
            store.upsert(answer)
        except client.ApiError as error:
            if common.namespace_terminating(error):
                raise
            failures.append(f"{kind.kind} {name}: {common.error_message(error)}")
    if failures:
        return ConditionUpdate(
            ConditionType.CHILDREN_READY,
            False,
            Reason.CHILD_APPLY_FAILED,
            "; ".join(failures)[:2048],
        )
    return ConditionUpdate(ConditionType.CHILDREN_READY, True, Reason.CHILDREN_APPLIED, "")


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
            created = await client.request(
                ctx.api, "POST", POD.path(owner.namespace), body=manifest
            )
        except client.ApiError as error:
            if error.status != 409:  # 409: it exists already; the next reconcile sees it
                raise
        else:
            ctx.store(POD.kind).upsert(created)
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
        if isinstance(error, AgentUnreachable) and lifecycle.waits_for_agent(
            status.phase_since, started
        ):
            raise  # asked again with backoff: the pod and its memory are still there
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
        if isinstance(error, AgentUnreachable) and lifecycle.waits_for_agent(
            status.phase_since, _now()
        ):
            raise  # asked again with backoff: the checkpoint is intact in the store
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


# --- one reconcile ------------------------------------------------------------------------


async def reconcile_key(ctx: OperatorContext, key: Key) -> Result:
    """The reconcile the Sandbox reconciler runs: everything it reads comes from the stores."""
    body = ctx.store(KIND).get(key.namespace, key.name)
    if body is None:
        return Result()  # gone; its DELETED event forgets the worker
    try:
        return await _reconcile(ctx, body)
    except client.ApiError as error:
        if common.namespace_terminating(error):
            return Result()  # its namespace is going away, and the object with it
        raise


async def reconcile(ctx: OperatorContext, namespace: str, name: str) -> Result:
    """Refresh the stores of one Sandbox from the API, then reconcile it once: for callers
    without watches (tests, tools). The operator itself runs `reconcile_key` from events."""
    await refresh(ctx, namespace, name)
    return await reconcile_key(ctx, Key(namespace, name))


async def refresh(ctx: OperatorContext, namespace: str, name: str) -> None:
    """Read one Sandbox and its children from the API into the stores."""
    body = await client.get(ctx.api, SANDBOX, namespace, name)
    if body is None:
        ctx.store(KIND).remove(namespace, name)
    else:
        ctx.store(KIND).upsert(body)
    wanted: list[tuple[Kind, str]] = [
        (POD, names.pod_name(name)),
        (SECRET, token.token_secret_name(name)),
        *((kind, child) for kind, child, _ in _child_names(name)),
    ]
    for kind, child in wanted:
        try:
            live = await client.get(ctx.api, kind, namespace, child)
        except client.ApiError as error:
            if error.status in (403, 405):
                continue  # a kind this cluster does not serve or let us read
            raise
        if live is None:
            ctx.store(kind.kind).remove(namespace, child)
        else:
            ctx.store(kind.kind).upsert(live)


def _child_names(name: str) -> list[tuple[Kind, str, None]]:
    return [
        (PVC, names.workspace_claim_name(name), None),
        (RESOURCE_CLAIM_TEMPLATE, names.gpu_claim_template_name(name), None),
        (SERVICE, names.service_name(name), None),
        (NETWORK_POLICY, names.network_policy_name(name), None),
        (LEASE, names.activity_lease_name(name), None),
    ]


async def _reconcile(ctx: OperatorContext, body: dict[str, Any]) -> Result:
    metadata = body["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    generation = int(metadata.get("generation", 0))
    now = _now()
    try:
        sandbox = Sandbox.model_validate(body)
    except ValidationError as error:
        await common.report_invalid(ctx, SANDBOX, body, error)
        return Result()
    owner = Identity(name=name, namespace=namespace, uid=metadata["uid"])
    if metadata.get("deletionTimestamp"):
        return await _finalize(ctx, body, sandbox, owner)
    body = await _ensure_finalizer(ctx, body)
    status = (sandbox.status or SandboxStatus()).model_copy(deep=True)
    spec_changed = status.observed_generation != generation or status.phase is None
    if spec_changed:
        status.restarts = None  # a new spec gets a fresh count of pod failures
    children = await converge_children(ctx, owner, sandbox, spec_changed)
    pod = ctx.store(POD.kind).get(namespace, names.pod_name(name))
    lease = ctx.store(LEASE.kind).get(namespace, names.activity_lease_name(name))
    runtime = pod_builder.runtime_class(sandbox.spec, ctx.build)
    annotations = metadata.get("annotations") or {}
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
        hibernation=defaults.effective_hibernation(sandbox.spec, ctx.config),
        restarts=status.restarts or 0,
        release_requested=annotations.get(contract.RELEASE_CHECKPOINT_ANNOTATION),
    )
    decision = lifecycle.decide(observed)
    gpu_count = sandbox.spec.gpu.count if sandbox.spec.gpu else 0
    status.usage = account_usage(status, observed, gpu_count, decision.phase != status.phase)
    for action in decision.actions:
        await _act(ctx, action, owner, sandbox, status, pod, body)
        failpoints.hit(f"after:{action.value}")
    if decision.count_restart:
        status.restarts = (status.restarts or 0) + 1
    if decision.phase != status.phase:
        failpoints.hit(f"before-status:{decision.phase.value}")
    await _write_status(ctx, body, sandbox, status, decision, observed, owner, children)
    return Result(requeue_after=decision.requeue_after)


async def _ensure_finalizer(ctx: OperatorContext, body: dict[str, Any]) -> dict[str, Any]:
    """Add the Sandbox's finalizer (once), with its resourceVersion: the cleanup on deletion
    (checkpoint, agent key) must not be skipped."""
    metadata = body["metadata"]
    finalizers = list(metadata.get("finalizers") or [])
    if FINALIZER in finalizers:
        return body
    answer = await client.merge_patch(
        ctx.api,
        SANDBOX,
        metadata["namespace"],
        metadata["name"],
        {"metadata": {"finalizers": [*finalizers, FINALIZER]}},
        resource_version=metadata.get("resourceVersion"),
    )
    ctx.store(KIND).upsert(answer)
    return answer


async def _finalize(
    ctx: OperatorContext, body: dict[str, Any], sandbox: Sandbox, owner: Identity
) -> Result:
    """A deleted Sandbox: say Terminating, release its checkpoint, have the agent forget its
    key, then let it go. Retried with backoff; after `cleanup_give_up()` it gives up with a
    Warning Event (the archive is encrypted, and the key is the one thing left)."""
    metadata = body["metadata"]
    if FINALIZER not in (metadata.get("finalizers") or []):
        return Result()
    status = (sandbox.status or SandboxStatus()).model_copy(deep=True)
    if status.phase is not SandboxPhase.TERMINATING:
        # The time up to now is counted (as idle while running: no request is in flight).
        gpu_count = sandbox.spec.gpu.count if sandbox.spec.gpu else 0
        status.usage = accounted(status, _now(), False, gpu_count, phase_changes=True)
        status.phase = SandboxPhase.TERMINATING
        status.phase_since = _now()
        status.conditions = merge_conditions(
            status.conditions,
            (
                ConditionUpdate(
                    ConditionType.READY,
                    False,
                    Reason.SANDBOX_TERMINATING,
                    "deleted; releasing its checkpoint and keys",
                ),
            ),
            int(metadata.get("generation", 0)),
            _now(),
        )
        body = await _patch_status(ctx, body, status)
        metrics.TRANSITIONS.labels(phase=SandboxPhase.TERMINATING.value).inc()
    try:
        if status.checkpoint is not None:
            with contextlib.suppress(CheckpointUnavailable):
                await ctx.checkpointer.release(owner.namespace, status.checkpoint)
        node = status.checkpoint.node if status.checkpoint else status.node_name
        with contextlib.suppress(CheckpointUnavailable):
            await ctx.checkpointer.forget(owner.namespace, owner.name, node)
    except CheckpointFailed as error:
        deleted_at = observe.parse_time(metadata.get("deletionTimestamp")) or _now()
        if _now() < deleted_at + cleanup_give_up():
            raise
        message = (
            f"gave up cleaning up after {cleanup_give_up()}: {error}; the checkpoint archive or"
            " key may remain (docs/lifecycle.md, Deletion)"
        )
        log.warning(message, extra={"sandbox": f"{owner.namespace}/{owner.name}"})
        await events.post(ctx.api, body, events.WARNING, Reason.CLEANUP_ABANDONED, message)
    finalizers = [f for f in body["metadata"].get("finalizers") or [] if f != FINALIZER]
    try:
        answer = await client.merge_patch(
            ctx.api,
            SANDBOX,
            owner.namespace,
            owner.name,
            {"metadata": {"finalizers": finalizers or None}},
            resource_version=body["metadata"].get("resourceVersion"),
        )
    except client.ApiError as error:
        if error.status == 404:
            return Result()
        raise
    ctx.store(KIND).upsert(answer)
    return Result()


async def _patch_status(
    ctx: OperatorContext, body: dict[str, Any], status: SandboxStatus
) -> dict[str, Any]:
    """Write status as a merge patch carrying the resourceVersion it was computed from.

    Only this controller writes Sandbox status, so a conflict means the spec or metadata moved:
    if the status on the server is still the one this was computed from, the write is
    retried on the newer version; otherwise the reconcile starts again (`Conflict`)."""
    metadata = body["metadata"]
    old = body.get("status") or {}
    patch = status_patch(old, status.to_wire())
    if patch is None:
        return body
    try:
        answer = await client.merge_patch(
            ctx.api,
            SANDBOX,
            metadata["namespace"],
            metadata["name"],
            patch,
            subresource="status",
            resource_version=metadata.get("resourceVersion"),
        )
    except client.Conflict:
        fresh = await client.get(ctx.api, SANDBOX, metadata["namespace"], metadata["name"])
        if fresh is None or (fresh.get("status") or {}) != old:
            if fresh is not None:
                ctx.store(KIND).upsert(fresh)
            raise
        answer = await client.merge_patch(
            ctx.api,
            SANDBOX,
            metadata["namespace"],
            metadata["name"],
            patch,
            subresource="status",
            resource_version=fresh["metadata"].get("resourceVersion"),
        )
    ctx.store(KIND).upsert(answer)
    return answer


async def _write_status(
    ctx: OperatorContext,
    body: dict[str, Any],
    sandbox: Sandbox,
    status: SandboxStatus,
    decision: lifecycle.Decision,
    observed: lifecycle.Observed,
    owner: Identity,
    children: ConditionUpdate,
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
    egress = network.egress_condition(sandbox.spec)
    status.conditions = merge_conditions(
        status.conditions, (*decision.conditions, children, egress), observed.generation, now
    )
    if not egress.status and before.get(egress.type) != ("False", egress.reason):
        await events.post(ctx.api, body, events.WARNING, egress.reason, egress.message)
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
    await _patch_status(ctx, body, status)
    if children.reason != before.get(children.type, (None, None))[1] and not children.status:
        await events.post(ctx.api, body, events.WARNING, children.reason, children.message)
    if decision.reason is not None and (decision.phase != previous or conditions_changed):
        event_type = events.WARNING if decision.warning else events.NORMAL
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


def make_reconciler(ctx: OperatorContext, resync: float | None = None) -> Reconciler:
    """The Sandbox reconciler: `reconcile_key` per object, failures reported in status."""
    store = ctx.store(KIND)

    async def run(key: Key) -> Result:
        return await reconcile_key(ctx, key)

    async def report(key: Key, error: Exception, failures: int) -> None:
        await common.report_error(ctx, SANDBOX, store.get(key.namespace, key.name), error, failures)

    return Reconciler("sandbox", run, resync=resync or resync_seconds(), report_error=report)


# --- watches: stores and triggers ----------------------------------------------------------


def _key_of_child(labels: Mapping[str, str], label: str) -> str | None:
    value = labels.get(label)
    return str(value) if value else None


def on_sandbox_event(ctx: OperatorContext, event_type: str, body: Mapping[str, Any]) -> None:
    """A Sandbox changed: store it and wake its worker; deleted: forget both."""
    metadata = body.get("metadata") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not namespace or not name:
        return
    key = Key(namespace, name)
    reconciler = ctx.reconcilers.get(KIND)
    if event_type == "DELETED":
        ctx.store(KIND).remove(namespace, name)
        if reconciler is not None:
            reconciler.forget(key)
        return
    ctx.store(KIND).upsert(body)
    if reconciler is not None:
        reconciler.trigger(key)


def on_child_event(
    ctx: OperatorContext, kind: str, event_type: str, body: Mapping[str, Any], sandbox: str | None
) -> None:
    """A pod, Lease or other child changed: store it, and wake its Sandbox's worker (if the
    Sandbox exists: a child's event after its Sandbox is gone starts nothing)."""
    metadata = body.get("metadata") or {}
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not namespace or not name:
        return
    ctx.store(kind).observe(event_type, body)
    reconciler = ctx.reconcilers.get(KIND)
    if sandbox and reconciler is not None and ctx.store(KIND).get(namespace, sandbox) is not None:
        reconciler.trigger(Key(namespace, sandbox))
