"""The ModelDeployment controller: read the caches, ask `decide.model` what next, do it, write
status.

It runs on the reconcile core (`reconciler.py`): kopf watch events feed the stores (the
deployments, their replica pods, their activity Leases) and trigger one worker per
deployment; the worker reconciles level-based — every child converged, the replica pods the
decision names created or deleted, status written only when it changed, with its
resourceVersion — and sleeps until the decision's `requeue_after`, an event, or the resync.
An exception is reported in status (Ready=False, ReconcilerError) by the core's error path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from kocoon import contract, defaults
from kocoon.api.conditions import ConditionType, ModelPhase, Reason
from kocoon.api.model import (
    Backend,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelUsage,
)
from kocoon.builders import gpu, names
from kocoon.builders import model as model_builder
from kocoon.builders.context import Identity
from kocoon.builders.engines import SleepProtocol
from kocoon.controllers import common, engine_sleep, failpoints, metrics
from kocoon.controllers import model_checkpoints as checkpoints
from kocoon.controllers.checkpoints import (
    RESTORES_INTO_POD,
    CheckpointFailed,
    CheckpointUnavailable,
)
from kocoon.controllers.context import OperatorContext, current, resync_seconds
from kocoon.controllers.observe import (
    CHECKPOINT_FAILED_ANNOTATION,
    STALE_IN_FLIGHT_LEASES,
    STALE_IN_FLIGHT_SECONDS,
    parse_time,
)
from kocoon.controllers.reconciler import Key, Reconciler, Result
from kocoon.controllers.sandbox import cleanup_give_up
from kocoon.decide import model as decide
from kocoon.kube import client, events
from kocoon.kube.resources import (
    GROUP,
    LEASE,
    MODEL_DEPLOYMENT,
    POD,
    PVC,
    RESOURCE_CLAIM_TEMPLATE,
    VERSION,
)
from kocoon.status import ConditionUpdate, merge_conditions, status_patch

log = logging.getLogger(__name__)
KIND = MODEL_DEPLOYMENT.kind
POD_STORE = "Pod"
LEASE_STORE = "Lease"
# On each replica pod: the hash of the pod template it was built from; a replica of an older
# template is replaced (one ready replica at a time).
TEMPLATE_HASH_ANNOTATION = "kocoon.io/template-hash"
# On deployments with `wakeStrategy: checkpoint`: released only after their checkpoint is.
FINALIZER = "kocoon.io/model-cleanup"
# On a replica pod (`engineSleep`): whether the operator last put its engine to sleep.
ENGINE_ASLEEP_ANNOTATION = "kocoon.io/engine-asleep"


def _now() -> datetime:
    return datetime.now(UTC)


# --- pure readers: API objects → the views `decide.model` takes ----------------------------


def _engine_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == contract.ENGINE_CONTAINER:
            return dict(status)
    return {}


def _exit_summary(terminated: Mapping[str, Any]) -> str | None:
    if not terminated:
        return None
    reason = terminated.get("reason") or "Terminated"
    summary = f"{reason} (exit code {terminated.get('exitCode')})"
    message = str(terminated.get("message") or "").strip()
    return f"{summary}: {message[:512]}" if message else summary


def replica_view(pod: Mapping[str, Any]) -> decide.Replica | None:
    """A replica pod as the decision sees it; None for a pod without a replica index."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    try:
        index = int(labels.get(contract.REPLICA_LABEL, ""))
    except ValueError:
        return None
    status = pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    unschedulable = None
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        unschedulable = str(scheduled.get("message") or "no node can run the pod")
    engine = _engine_status(pod)
    state = engine.get("state") or {}
    waiting = state.get("waiting") or {}
    last = (engine.get("lastState") or {}).get("terminated") or state.get("terminated") or {}
    phase = str(status.get("phase") or "Pending")
    failed_reason = None
    if phase == "Failed":
        failed_reason = ": ".join(
            str(part) for part in (status.get("reason"), status.get("message")) if part
        ) or _exit_summary(last)
    running = conditions.get("Ready", {}).get("status") == "True" and phase == "Running"
    annotations = metadata.get("annotations") or {}
    held = annotations.get(names.HOLD_FOR_RESTORE_ANNOTATION) == "true"
    restored = annotations.get(names.RESTORED_ANNOTATION)
    return decide.Replica(
        name=str(metadata.get("name", "")),
        index=index,
        uid=str(metadata.get("uid", "")),
        phase=phase,
        # A held wake pod runs only the hold command until its checkpoint is restored.
        ready=running and (not held or restored is not None),
        ip=status.get("podIP") or None,
        node=(pod.get("spec") or {}).get("nodeName"),
        deleting=metadata.get("deletionTimestamp") is not None,
        unschedulable=unschedulable,
        restarts=int(engine.get("restartCount") or 0),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        last_exit=_exit_summary(last),
        failed_reason=failed_reason,
        template_hash=annotations.get(TEMPLATE_HASH_ANNOTATION),
        held=held,
        restore_from=annotations.get(names.RESTORE_FROM_ANNOTATION),
        restored=restored,
        running=running,
        checkpoint_failed=CHECKPOINT_FAILED_ANNOTATION in annotations,
        asleep={"true": True, "false": False}.get(annotations.get(ENGINE_ASLEEP_ANNOTATION, "")),
    )


def demand(lease: Mapping[str, Any] | None) -> decide.Demand:
    """The router's report on the activity Lease: in flight, queued, last request, wake."""
    if lease is None:
        return decide.Demand()
    annotations = (lease.get("metadata") or {}).get("annotations") or {}

    def count(key: str) -> int:
        try:
            return max(0, int(annotations.get(key, "0")))
        except ValueError:
            return 0

    in_flight, queued = count(contract.IN_FLIGHT_ANNOTATION), count(contract.QUEUED_ANNOTATION)
    spec = lease.get("spec") or {}
    renew = parse_time(spec.get("renewTime"))
    valid_until = None
    if renew is not None and (in_flight or queued):
        seconds = max(
            STALE_IN_FLIGHT_SECONDS,
            STALE_IN_FLIGHT_LEASES * int(spec.get("leaseDurationSeconds") or 0),
        )
        valid_until = renew + timedelta(seconds=seconds)
    if valid_until is not None and _now() > valid_until:
        queued = 0  # a router that stopped renewing holds nothing any more
    return decide.Demand(
        in_flight=in_flight,
        queued=queued,
        last_request=parse_time(annotations.get(contract.LAST_REQUEST_ANNOTATION)),
        wake_requested_at=parse_time(annotations.get(contract.WAKE_REQUESTED_ANNOTATION)),
        in_flight_valid_until=valid_until,
    )


def previous(status: ModelDeploymentStatus) -> decide.Previous:
    usage = status.usage or ModelUsage()
    return decide.Previous(
        phase=status.phase,
        phase_since=status.phase_since,
        observed_generation=status.observed_generation,
        desired=status.desired_replicas,
        lower_demand_since=status.lower_demand_since,
        failures=status.restarts or 0,
        billed_replicas=len(status.backends),
        usage=decide.Usage(
            replica_seconds=usage.replica_seconds,
            gpu_seconds=usage.gpu_seconds,
            accounted_until=usage.accounted_until,
            wake_count=usage.wake_count,
        ),
    )


def template_hash(manifest: Mapping[str, Any]) -> str:
    """A short, stable hash of what a replica runs (its pod spec), ignoring the index."""
    spec = json.dumps(manifest.get("spec") or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def identity(body: Mapping[str, Any]) -> Identity:
    metadata = body["metadata"]
    return model_builder.identity(metadata["name"], metadata["namespace"], metadata["uid"])


# --- the reconcile --------------------------------------------------------------------------


class ModelController:
    """One per operator process: the reconcile of every ModelDeployment, on the core."""

    def __init__(self, ctx: OperatorContext) -> None:
        self.ctx = ctx
        self.deployments = ctx.store(KIND)
        self.pods = ctx.store(POD_STORE)
        self.leases = ctx.store(LEASE_STORE)
        # When each deployment's children were last applied, and for which generation:
        # applied again on a spec change and at least once per resync (a child deleted by
        # hand comes back), not on every reconcile.
        self._children_applied: dict[Key, tuple[int, float]] = {}
        self.reconciler = Reconciler(
            "modeldeployment",
            self.reconcile,
            resync=resync_seconds(),
            report_error=self.report_error,
        )

    def forget(self, key: Key) -> None:
        self._children_applied.pop(key, None)
        self.reconciler.forget(key)

    async def report_error(self, key: Key, error: Exception, failures: int) -> None:
        body = self.deployments.get(key.namespace, key.name)
        await common.report_error(self.ctx, MODEL_DEPLOYMENT, body, error, failures)

    async def reconcile(self, key: Key) -> Result:
        body = self.deployments.get(key.namespace, key.name)
        if body is None:
            return Result()
        if body["metadata"].get("deletionTimestamp"):
            # The children go with it by garbage collection; a checkpoint is released first.
            return await self._finalize(body)
        try:
            deployment = ModelDeployment.model_validate(body)
        except ValidationError as error:
            await common.report_invalid(self.ctx, MODEL_DEPLOYMENT, body, error)
            return Result()
        try:
            if deployment.spec.wake_strategy == "checkpoint":
                body = await self._add_finalizer(body)
            return await self._reconcile(key, body, deployment)
        except client.ApiError as error:
            if common.namespace_terminating(error):
                return Result()
            raise

    async def _add_finalizer(self, body: dict[str, Any]) -> dict[str, Any]:
        """A deployment that keeps checkpoints is finalized: its checkpoint and the agent's key
        for it are released before it goes."""
        metadata = body["metadata"]
        finalizers = list(metadata.get("finalizers") or [])
        if FINALIZER in finalizers:
            return body
        answer = await client.merge_patch(
            self.ctx.api,
            MODEL_DEPLOYMENT,
            metadata["namespace"],
            metadata["name"],
            {"metadata": {"finalizers": [*finalizers, FINALIZER]}},
            resource_version=metadata.get("resourceVersion"),
        )
        self.deployments.upsert(answer)
        return answer

    async def _finalize(self, body: dict[str, Any]) -> Result:
        metadata = body["metadata"]
        finalizers = list(metadata.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return Result()
        owner = identity(body)
        status = ModelDeploymentStatus.model_validate(body.get("status") or {})
        node = status.checkpoint.node if status.checkpoint else None
        try:
            await checkpoints.release(self.ctx, owner, status)
            with contextlib.suppress(CheckpointUnavailable):
                await self.ctx.checkpointer.forget(
                    owner.namespace, checkpoints.agent_name(owner), node
                )
        except CheckpointFailed as error:
            deleted_at = parse_time(metadata.get("deletionTimestamp")) or _now()
            if _now() < deleted_at + cleanup_give_up():
                raise
            message = (
                f"gave up cleaning up after {cleanup_give_up()}: {error}; the checkpoint"
                " archive or key may remain"
            )
            await events.post(self.ctx.api, body, events.WARNING, Reason.CLEANUP_ABANDONED, message)
        remaining = [f for f in finalizers if f != FINALIZER]
        try:
            answer = await client.merge_patch(
                self.ctx.api,
                MODEL_DEPLOYMENT,
                owner.namespace,
                owner.name,
                {"metadata": {"finalizers": remaining or None}},
                resource_version=metadata.get("resourceVersion"),
            )
        except client.ApiError as error:
            if error.status == 404:
                return Result()
            raise
        self.deployments.upsert(answer)
        return Result()

    async def _reconcile(
        self, key: Key, body: dict[str, Any], deployment: ModelDeployment
    ) -> Result:
        ctx = self.ctx
        owner = identity(body)
        spec = deployment.spec
        generation = int(body["metadata"].get("generation") or 0)
        status = (deployment.status or ModelDeploymentStatus()).model_copy(deep=True)
        children = await self._converge_children(key, owner, spec, generation)
        lease = self.leases.get(
            key.namespace, contract.activity_lease_name(contract.TARGET_KIND_MODEL, key.name)
        )
        if lease is None or not _owned_by(lease, owner):
            await client.apply(ctx.api, model_builder.activity_lease(owner))
        pods = self.pods.select(key.namespace, {contract.MODEL_LABEL: key.name})
        try:
            sample = model_builder.replica_pod(owner, spec, ctx.build, 0)
        except model_builder.ModelSourceError as error:
            await self._source_unusable(body, status, generation, str(error))
            return Result()
        replicas = tuple(r for p in pods if (r := replica_view(p)) is not None)
        protocol = model_builder.engine_container(owner, spec, ctx.build).sleep
        if protocol is not None and protocol.status is not None:
            replicas = await engine_sleep.ask(replicas, protocol)
        observed = decide.Observed(
            name=key.name,
            spec=spec,
            generation=generation,
            replicas=replicas,
            demand=demand(lease),
            previous=previous(status),
            now=_now(),
            template_hash=template_hash(sample),
            checkpoint_unavailable=self._checkpoint_unavailable(spec),
            gpu_resources=tuple(gpu.extended_resources(spec.gpu, ctx.build)),
            sleep_needs_wake=protocol is not None and protocol.wake is not None,
            sleep_by_request=protocol is not None and protocol.sleep is not None,
            checkpoint=status.checkpoint,
        )
        decision = decide.decide(observed)
        extra = await self._checkpoints(body, owner, status, decision, observed, pods)
        if protocol is not None:
            await self._sleep_and_wake(owner, decision, protocol)
        await self._act(owner, spec, decision, observed, lease, status)
        source = ConditionUpdate(
            ConditionType.MODEL_SOURCE_READY,
            True,
            Reason.MODEL_SOURCE_VALID,
            f"{spec.model.scheme}:// source, loaded from {model_builder.model_path(spec)}",
        )
        await self._write_status(
            body, owner, spec, status, decision, observed, (children, source, *extra)
        )
        return Result(decision.requeue_after)

    async def _source_unusable(
        self, body: dict[str, Any], status: ModelDeploymentStatus, generation: int, why: str
    ) -> None:
        """A source no replica could load with these settings: Failed, naming the field, and
        no pod until the spec (or the operator's configuration) changes."""
        now = _now()
        if status.phase is not ModelPhase.FAILED:
            status.phase_since = now
            await events.post(self.ctx.api, body, events.WARNING, Reason.MODEL_SOURCE_INVALID, why)
        status.phase = ModelPhase.FAILED
        status.observed_generation = generation
        status.conditions = merge_conditions(
            status.conditions,
            (
                ConditionUpdate(
                    ConditionType.MODEL_SOURCE_READY, False, Reason.MODEL_SOURCE_INVALID, why
                ),
                ConditionUpdate(ConditionType.READY, False, Reason.MODEL_SOURCE_INVALID, why),
            ),
            generation,
            now,
        )
        patch = status_patch(body.get("status") or {}, status.to_wire())
        if patch is not None:
            written = await client.merge_patch(
                self.ctx.api,
                MODEL_DEPLOYMENT,
                body["metadata"]["namespace"],
                body["metadata"]["name"],
                patch,
                subresource="status",
                resource_version=body["metadata"].get("resourceVersion"),
            )
            self.deployments.upsert(written)

    async def _sleep_and_wake(
        self, owner: Identity, decision: decide.Decision, protocol: SleepProtocol
    ) -> None:
        """Send the engines the decision's sleep and wake requests; what each engine answered
        is kept on its pod (engines without a status query are known by it)."""
        for replicas, request, asleep in (
            (decision.sleep, protocol.sleep, True),
            (decision.wake, protocol.wake, False),
        ):
            if request is None:
                continue
            for replica in replicas:
                if await engine_sleep.send(replica, request):
                    await client.merge_patch(
                        self.ctx.api,
                        POD,
                        owner.namespace,
                        replica.name,
                        {
                            "metadata": {
                                "annotations": {ENGINE_ASLEEP_ANNOTATION: str(asleep).lower()}
                            }
                        },
                    )

    def _checkpoint_unavailable(self, spec: ModelDeploymentSpec) -> str | None:
        """Why a checkpoint wake cannot work for these replicas (the rule admission applies,
        for objects admitted without it), or None."""
        if spec.wake_strategy != "checkpoint":
            return None
        config = self.ctx.config
        runtime = model_builder.runtime_class(spec, self.ctx.build)
        if not defaults.runtime_can_checkpoint_memory(runtime, config):
            return (
                f"runtime class {runtime!r} cannot checkpoint memory"
                f" (memoryCheckpointRuntimeClasses: {config.memory_checkpoint_runtime_classes})"
            )
        if spec.gpu is not None:
            return (
                "GPU memory needs cuda-checkpoint, which this operator does not drive yet"
                " (cuda-checkpoint not wired)"
            )
        return None

    async def _checkpoints(
        self,
        body: dict[str, Any],
        owner: Identity,
        status: ModelDeploymentStatus,
        decision: decide.Decision,
        observed: decide.Observed,
        pods: list[dict[str, Any]],
    ) -> tuple[ConditionUpdate, ...]:
        """The decision's checkpoint steps: release, checkpoint, restore (at most one each)."""
        updates: list[ConditionUpdate] = []
        by_name = {p["metadata"]["name"]: p for p in pods}
        if decision.release_checkpoint:
            await checkpoints.release(self.ctx, owner, status)
            updates.append(
                ConditionUpdate(
                    ConditionType.CHECKPOINT_AVAILABLE,
                    False,
                    Reason.NO_CHECKPOINT,
                    decision.release_message,
                )
            )
        if decision.checkpoint is not None:
            replica = decision.checkpoint
            updates.append(
                await checkpoints.take(
                    self.ctx,
                    owner,
                    replica,
                    by_name.get(replica.name, {}),
                    observed.template_hash,
                    status,
                    body,
                )
            )
        if decision.restore is not None and status.checkpoint is not None:
            replica = decision.restore
            updates.append(
                await checkpoints.restore(
                    self.ctx, owner, replica, by_name.get(replica.name, {}), status, body
                )
            )
        return tuple(updates)

    async def _converge_children(
        self, key: Key, owner: Identity, spec: ModelDeploymentSpec, generation: int
    ) -> ConditionUpdate:
        """Apply the Service, cache PVC and NetworkPolicy on a spec change and once per
        resync; a failure is a ChildrenReady=False condition, not a stop."""
        applied = self._children_applied.get(key)
        fresh = time.monotonic() - applied[1] < self.reconciler.resync if applied else False
        if applied is not None and applied[0] == generation and fresh:
            return ConditionUpdate(ConditionType.CHILDREN_READY, True, Reason.CHILDREN_APPLIED)
        problems = []
        for child in model_builder.children(owner, spec, self.ctx.build):
            try:
                await client.apply(self.ctx.api, child)
            except client.ApiError as error:
                if common.namespace_terminating(error):
                    raise
                kind = child.get("kind")
                problems.append(f"{kind} {child['metadata']['name']}: {error.message}")
        try:
            await self._prune(owner, spec)
        except client.ApiError as error:
            if common.namespace_terminating(error):
                raise
            problems.append(f"pruning: {error.message}")
        if problems:
            self._children_applied.pop(key, None)
            return ConditionUpdate(
                ConditionType.CHILDREN_READY,
                False,
                Reason.CHILD_APPLY_FAILED,
                "; ".join(problems)[:2048],
            )
        self._children_applied[key] = (generation, time.monotonic())
        return ConditionUpdate(ConditionType.CHILDREN_READY, True, Reason.CHILDREN_APPLIED)

    async def _prune(self, owner: Identity, spec: ModelDeploymentSpec) -> None:
        """Delete the children the spec no longer wants (cache removed: its claim; GPU slice
        no longer DRA: its claim template), if they are ours."""
        unwanted = []
        if spec.cache is None:
            unwanted.append((PVC, model_builder.cache_claim_name(owner.name)))
        if spec.gpu is None or spec.gpu.mode != "dra":
            unwanted.append(
                (RESOURCE_CLAIM_TEMPLATE, model_builder.gpu_claim_template_name(owner.name))
            )
        for kind, name in unwanted:
            found = await client.get(self.ctx.api, kind, owner.namespace, name)
            if found is None or not _owned_by(found, owner):
                continue
            log.info("pruning %s %s", kind.kind, name, extra={"modeldeployment": owner.name})
            await client.delete(
                self.ctx.api,
                kind,
                owner.namespace,
                name,
                preconditions_uid=found["metadata"]["uid"],
            )

    async def _act(
        self,
        owner: Identity,
        spec: ModelDeploymentSpec,
        decision: decide.Decision,
        observed: decide.Observed,
        lease: Mapping[str, Any] | None,
        status: ModelDeploymentStatus,
    ) -> None:
        api = self.ctx.api
        grace = decide.deletion_grace_seconds(decision)
        for replica in decision.delete:
            await client.delete(
                api,
                POD,
                owner.namespace,
                replica.name,
                preconditions_uid=replica.uid,
                grace_period_seconds=grace,
            )
            failpoints.hit("model:after-delete")
        for index in decision.create:
            manifest = self._replica_manifest(owner, spec, decision, status, index)
            annotations = manifest["metadata"].setdefault("annotations", {})
            annotations[TEMPLATE_HASH_ANNOTATION] = observed.template_hash
            try:
                created = await client.request(
                    api, "POST", POD.path(owner.namespace), body=manifest
                )
            except client.ApiError as error:
                if error.status != 409:  # 409: it exists; the watch brings it
                    raise
            else:
                self.pods.upsert(created)
            failpoints.hit("model:after-create")
        if decision.clear_wake_request and lease is not None:
            await client.merge_patch(
                api,
                LEASE,
                owner.namespace,
                lease["metadata"]["name"],
                {"metadata": {"annotations": {contract.WAKE_REQUESTED_ANNOTATION: None}}},
            )

    def _replica_manifest(
        self,
        owner: Identity,
        spec: ModelDeploymentSpec,
        decision: decide.Decision,
        status: ModelDeploymentStatus,
        index: int,
    ) -> dict[str, Any]:
        checkpoint = status.checkpoint
        if index not in decision.restore_into or checkpoint is None:
            return model_builder.replica_pod(owner, spec, self.ctx.build, index)
        return model_builder.replica_pod(
            owner,
            spec,
            checkpoints.hold_settings(spec, self.ctx.build),
            index,
            restore_from=checkpoint.id,
            node_name=checkpoint.node,
            hold_for_restore=checkpoint.driver in RESTORES_INTO_POD,
        )

    async def _write_status(
        self,
        body: dict[str, Any],
        owner: Identity,
        spec: ModelDeploymentSpec,
        status: ModelDeploymentStatus,
        decision: decide.Decision,
        observed: decide.Observed,
        extra: tuple[ConditionUpdate, ...],
    ) -> None:
        before = status.phase
        before_conditions = {c.type: (c.status, c.reason) for c in status.conditions}
        if decision.phase != before:
            metrics.MODEL_TRANSITIONS.labels(phase=decision.phase.value).inc()
        status.phase = decision.phase
        status.phase_since = decision.phase_since
        status.conditions = merge_conditions(
            status.conditions,
            (*decision.conditions, *extra),
            observed.generation,
            observed.now,
        )
        status.observed_generation = observed.generation
        status.replicas = decision.replicas
        status.ready_replicas = decision.ready_replicas
        status.desired_replicas = decision.desired
        status.lower_demand_since = decision.lower_demand_since
        status.restarts = decision.failures or None
        status.selector = f"{contract.MODEL_LABEL}={owner.name}"
        status.served_model_name = spec.route.served_model_name or owner.name
        status.backends = [
            Backend(pod=b.pod, address=b.address, ready=b.ready, sleeping=b.sleeping)
            for b in decision.backends
        ]
        status.endpoint = contract.OPENAI_BASE_PATH
        if observed.demand.last_request is not None:
            status.last_activity_time = observed.demand.last_request
        if decision.wake_latency_seconds is not None:
            status.last_wake_latency_seconds = decision.wake_latency_seconds
            metrics.MODEL_WAKE_SECONDS.observe(decision.wake_latency_seconds)
        if decision.usage_changed:
            usage = decision.usage
            status.usage = ModelUsage(
                replica_seconds=usage.replica_seconds,
                gpu_seconds=usage.gpu_seconds,
                wake_count=usage.wake_count,
                accounted_until=usage.accounted_until,
            )
        patch = status_patch(body.get("status") or {}, status.to_wire())
        if decision.phase != before:
            failpoints.hit(f"model:before-status:{decision.phase.value}")
        if patch is not None:
            written = await client.merge_patch(
                self.ctx.api,
                MODEL_DEPLOYMENT,
                owner.namespace,
                owner.name,
                patch,
                subresource="status",
                resource_version=body["metadata"].get("resourceVersion"),
            )
            self.deployments.upsert(written)
        await self._post_events(body, decision, before, before_conditions, status)

    async def _post_events(
        self,
        body: dict[str, Any],
        decision: decide.Decision,
        before: ModelPhase | None,
        before_conditions: Mapping[str, tuple[str, str]],
        status: ModelDeploymentStatus,
    ) -> None:
        api = self.ctx.api
        name = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        for reason, message in decision.extra_events:
            log.warning(message, extra={"modeldeployment": name})
            await events.post(api, body, events.WARNING, reason, message)
        if decision.reason is not None:
            message = f"{before or 'New'} → {decision.phase}: {decision.message}".strip()
            log.info(message, extra={"modeldeployment": name})
            kind = events.WARNING if decision.warning else events.NORMAL
            await events.post(api, body, kind, decision.reason, message)
        # A condition that turned False for a new reason is worth a Warning of its own (an
        # unschedulable slice, a child that cannot be applied, an image that cannot be pulled).
        for condition in status.conditions:
            if condition.status != "False" or condition.type == ConditionType.READY:
                continue
            if before_conditions.get(condition.type) != ("False", condition.reason):
                await events.post(api, body, events.WARNING, condition.reason, condition.message)


def _owned_by(child: Mapping[str, Any], owner: Identity) -> bool:
    references = (child.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner.uid for ref in references)


# --- kopf wiring: watch events feed the stores and trigger the worker ----------------------

_controller: ModelController | None = None


def controller() -> ModelController:
    """The process's controller, made on first use (after kopf's startup set the context)."""
    global _controller
    ctx = current()
    if _controller is None or _controller.ctx is not ctx:
        _controller = ModelController(ctx)
        ctx.reconcilers[KIND] = _controller.reconciler
    return _controller


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def deployment_event(
    type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> None:
    if not namespace:
        return
    model = controller()
    key = Key(namespace, name)
    if type == "DELETED":
        model.deployments.remove(namespace, name)
        model.forget(key)
        return
    model.deployments.upsert(dict(body))
    model.reconciler.trigger(key)


@kopf.on.event("v1", "pods", labels={contract.MODEL_LABEL: kopf.PRESENT})
async def replica_event(
    type: str,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    labels: Mapping[str, str],
    **_: Any,
) -> None:
    if not namespace:
        return
    model = controller()
    model.pods.observe(type, dict(body))
    owner = labels[contract.MODEL_LABEL]
    if model.deployments.get(namespace, owner) is not None:
        model.reconciler.trigger(Key(namespace, owner))


@kopf.on.event(
    "coordination.k8s.io",
    "v1",
    "leases",
    labels={contract.TARGET_KIND_LABEL: contract.TARGET_KIND_MODEL},
)
async def activity_event(
    type: str,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    labels: Mapping[str, str],
    **_: Any,
) -> None:
    if not namespace:
        return
    model = controller()
    model.leases.observe(type, dict(body))
    target = labels.get(contract.TARGET_NAME_LABEL)
    if target and model.deployments.get(namespace, target) is not None:
        model.reconciler.trigger(Key(namespace, target))
