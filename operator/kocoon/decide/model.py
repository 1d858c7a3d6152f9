"""The ModelDeployment life, decided purely: (spec, replica pods, demand, last status, now) →
how many replicas, which pods to create or delete, the phase and what status says.

The controller gathers the inputs from its watch caches and carries out the decision; every
rule lives here, so the whole life is tested without a cluster. A decision is level-based:
it names the pods that should exist (`kocoon-model-<name>-<i>`, i < desired), so running it
again after an operator restart converges on the same replicas and never starts a second
pod for an index.

    Pending ─► Loading ─► Ready ─(idle for scaleDownDelay, minReplicas 0)─► ScaledToZero
                  ▲                                                           │
                  └───────────── Waking ◄─(a request: wake or held demand)───┘
    any ─(a replica fails again after MAX_REPLACEMENTS replacements)─► Failed
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from kocoon import contract
from kocoon.api.conditions import ConditionType, ModelPhase, Reason
from kocoon.api.model import ModelDeploymentSpec
from kocoon.api.sandbox import Checkpoint
from kocoon.status import ConditionUpdate

# A replica whose engine container restarted this often and is backing off is crash-looping:
# it is replaced by a new pod instead of waiting for the kubelet's ever longer back-off.
CRASH_LOOP_RESTARTS = 3
# Replacements of failed replicas in a row (reset when every replica is ready, or by a spec
# change) before the deployment is Failed and the router stops holding requests for it.
MAX_REPLACEMENTS = 3
# Usage is written on a transition, else at most this often while replicas run.
ACCOUNTING_STEP_SECONDS = 60.0
# Waiting on a pod that is being deleted (its index is needed again).
DELETING_POLL_SECONDS = 1.0
# `engineSleep`: how often the engines of ready replicas are asked whether they sleep.
ENGINE_SLEEP_POLL_SECONDS = 10.0
# Container states that a new pod would not cure: reported, not replaced.
STUCK_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


@dataclass(frozen=True)
class Replica:
    """What the controller reads from one replica pod."""

    name: str
    index: int
    uid: str
    phase: str = "Pending"
    ready: bool = False
    ip: str | None = None
    node: str | None = None
    deleting: bool = False
    # The scheduler's message when it cannot place the pod (PodScheduled=False/Unschedulable).
    unschedulable: str | None = None
    # The engine container: restarts, why it waits (CrashLoopBackOff, ImagePullBackOff...),
    # and how it last ended (Error, OOMKilled, exit code, message).
    restarts: int = 0
    waiting_reason: str | None = None
    waiting_message: str | None = None
    last_exit: str | None = None
    # Pod-level failure (phase Failed: evicted, or the engine exited for good).
    failed_reason: str | None = None
    # The pod template the replica was built from; a different one is replaced.
    template_hash: str | None = None
    # `engineSleep`: whether the engine says it sleeps (None: not asked, or no answer).
    asleep: bool | None = None
    # `checkpoint`: a wake pod whose container only holds the place (`held`) until the node
    # agent restores the checkpoint `restore_from` beside it (`restored` names it once done);
    # `running`: the pod's container is up (a held pod is not `ready` before its restore).
    held: bool = False
    restore_from: str | None = None
    restored: str | None = None
    running: bool = False
    # The operator marks a replica whose checkpoint failed: it scales down without one.
    checkpoint_failed: bool = False

    @property
    def address(self) -> str | None:
        return f"{self.ip}:{contract.ENGINE_PORT}" if self.ip else None

    @property
    def scheduled(self) -> bool:
        return self.node is not None and self.unschedulable is None


@dataclass(frozen=True)
class Demand:
    """What the router reports on the model's activity Lease."""

    in_flight: int = 0
    queued: int = 0
    last_request: datetime | None = None
    wake_requested_at: datetime | None = None
    # A count the router stopped renewing (it died mid-request) stops counting after this.
    in_flight_valid_until: datetime | None = None


@dataclass(frozen=True)
class Usage:
    """Metering: replica-seconds and GPU-seconds, counted up to `accounted_until`."""

    replica_seconds: float = 0.0
    gpu_seconds: float = 0.0
    accounted_until: datetime | None = None
    wake_count: int = 0


@dataclass(frozen=True)
class Previous:
    """What the last status written says (the controller's memory lives in status)."""

    phase: ModelPhase | None = None
    phase_since: datetime | None = None
    observed_generation: int | None = None
    # The replica count the last decision wanted, and since when demand has wanted fewer.
    desired: int | None = None
    lower_demand_since: datetime | None = None
    # Failed replicas replaced in a row.
    failures: int = 0
    # Replicas with an address at the last write: what the time since then is billed for.
    billed_replicas: int = 0
    usage: Usage = Usage()


@dataclass(frozen=True)
class Observed:
    name: str
    spec: ModelDeploymentSpec
    generation: int
    replicas: tuple[Replica, ...]
    demand: Demand
    previous: Previous
    now: datetime
    # Hash of the pod template the spec builds now ("" when unknown: never replace for it).
    template_hash: str = ""
    # Why a `checkpoint` wake cannot work here (no agent, no driver, a GPU without
    # cuda-checkpoint), or None when it can: replicas then wake cold and a condition says why.
    checkpoint_unavailable: str | None = None
    # The extended resources a replica's GPU slice asks for (e.g. `nvidia.com/mig-1g.10gb`):
    # a scheduler refusal naming one of them is "no node offers the slice".
    gpu_resources: tuple[str, ...] = ()
    # The checkpoint of a warm replica a `checkpoint` wake restores (status.checkpoint).
    checkpoint: Checkpoint | None = None
    # `engineSleep`: whether a sleeping engine needs an explicit wake (vLLM, SGLang) or wakes
    # by itself on the next request (llama-server). Only the first kind is kept from requests.
    sleep_needs_wake: bool = False
    # `engineSleep`: whether the operator puts the engine to sleep by a request (vLLM, SGLang)
    # rather than the engine falling asleep by itself when idle (llama-server).
    sleep_by_request: bool = False


@dataclass(frozen=True)
class Backend:
    """One replica as the router sees it (`status.backends[]`)."""

    pod: str
    address: str
    ready: bool
    sleeping: bool = False


@dataclass(frozen=True)
class Decision:
    phase: ModelPhase
    desired: int
    create: tuple[int, ...] = ()
    delete: tuple[Replica, ...] = ()
    conditions: tuple[ConditionUpdate, ...] = ()
    backends: tuple[Backend, ...] = ()
    # status.replicas (pods that exist and are not going away) and status.readyReplicas.
    replicas: int = 0
    ready_replicas: int = 0
    usage: Usage = Usage()
    # Whether `usage` moved (a transition, or a minute passed): only then is it written.
    usage_changed: bool = False
    phase_since: datetime | None = None
    lower_demand_since: datetime | None = None
    failures: int = 0
    clear_wake_request: bool = False
    # Set on the decision that ends a wake from zero: seconds from Waking to a ready replica.
    wake_latency_seconds: float | None = None
    # Why something happened, for an Event and the log (None: nothing worth one).
    reason: Reason | None = None
    message: str = ""
    warning: bool = False
    requeue_after: float | None = None
    extra_events: tuple[tuple[Reason, str], ...] = field(default_factory=tuple)
    # `checkpoint`: checkpoint this replica now (it is scaling to zero; deleted afterwards),
    # restore the checkpoint into this held replica, create these indices as held wake pods,
    # and release a checkpoint that no longer fits (another template, another strategy).
    checkpoint: Replica | None = None
    restore: Replica | None = None
    restore_into: tuple[int, ...] = ()
    release_checkpoint: bool = False
    release_message: str = ""
    # `engineSleep` by request: put these replicas' engines to sleep, wake these.
    sleep: tuple[Replica, ...] = ()
    wake: tuple[Replica, ...] = ()


# Replicas leaving for zero go at once: the engine's drain (a pause before SIGTERM, so the
# router drops the replica first) protects requests in flight, and at zero there are none —
# while a fixed-name replica still terminating would hold back the next wake.
SCALE_TO_ZERO_GRACE_SECONDS = 1


def deletion_grace_seconds(decision: Decision) -> int | None:
    """The grace period to delete `decision.delete` with; None keeps the pod's own."""
    return SCALE_TO_ZERO_GRACE_SECONDS if decision.desired == 0 else None


def _release_why(
    observed: Observed,
    usable: Checkpoint | None,
    live: Sequence[Replica],
    failing: Sequence[tuple[Replica, str]],
) -> str | None:
    """Why the deployment's checkpoint is released now; None to keep it."""
    current = observed.checkpoint
    if current is None:
        return None
    if any(r.restored == current.id for r in live):
        return (
            f"released: {current.id} was restored; the replica is checkpointed again when it"
            " scales to zero"
        )
    if usable is None:
        return f"released: {current.id} no longer fits the spec (template or wake strategy)"
    if any(r.held and r.restored is None for r, _ in failing):
        return f"released: the wake pod could not hold for {current.id}; waking cold"
    return None


# --- demand and the built-in autoscaler --------------------------------------------------------


def in_flight(observed: Observed) -> int:
    demand = observed.demand
    until = demand.in_flight_valid_until
    if demand.in_flight <= 0 or (until is not None and observed.now > until):
        return 0
    return demand.in_flight


def load(observed: Observed) -> int:
    """Requests the replicas must carry now: in flight plus held by the router."""
    return in_flight(observed) + max(0, observed.demand.queued)


def wanted_now(observed: Observed) -> int:
    """The autoscaler's answer for this moment alone: ceil(load / target) within bounds, and
    at least one while a wake is requested or requests are held or running."""
    scaling = observed.spec.scaling
    demand = load(observed)
    want = math.ceil(demand / scaling.target_concurrency)
    if demand > 0 or observed.demand.wake_requested_at is not None:
        want = max(want, 1)
    return min(max(want, min_replicas(observed.spec)), scaling.max_replicas)


def min_replicas(spec: ModelDeploymentSpec) -> int:
    """`scaling.minReplicas`; with `engineSleep` at least one: the replica stays and its
    engine sleeps instead of the deployment scaling to zero."""
    if spec.wake_strategy == "engineSleep":
        return max(1, spec.scaling.min_replicas)
    return spec.scaling.min_replicas


@dataclass(frozen=True)
class Scale:
    desired: int
    lower_demand_since: datetime | None = None
    due: datetime | None = None  # when a pending scale-down happens
    source: str = "autoscaler"


def desired_replicas(observed: Observed) -> Scale:
    """`spec.replicas` when set (kubectl scale, an HPA, KEDA); else the built-in autoscaler,
    which scales up at once and down only after `scaleDownDelay` of lower demand."""
    spec = observed.spec
    if spec.replicas is not None:
        return Scale(spec.replicas, source="spec.replicas")
    scaling = spec.scaling
    previous = observed.previous
    current = previous.desired
    if current is None:  # first decision: what exists is what was wanted
        current = len({r.index for r in observed.replicas if not r.deleting})
    current = min(max(current, min_replicas(spec)), scaling.max_replicas)
    want = wanted_now(observed)
    if want >= current:
        return Scale(want)
    since = previous.lower_demand_since or observed.now
    idle_from = since
    last = observed.demand.last_request
    if want == 0 and last is not None and last > idle_from:
        idle_from = last  # to zero only after scaleDownDelay without any request
    due = idle_from + scaling.scale_down_delay
    if observed.now >= due:
        return Scale(want)
    return Scale(current, lower_demand_since=since, due=due)


# --- replica health ------------------------------------------------------------------------


def broken(replica: Replica) -> str | None:
    """Why a replica must be replaced (failed or crash-looping), or None."""
    if replica.phase == "Failed":
        why = replica.failed_reason or replica.last_exit or "the pod failed"
        return f"pod {replica.name} failed: {why}"
    if replica.waiting_reason == "CrashLoopBackOff" and replica.restarts >= CRASH_LOOP_RESTARTS:
        exit_info = f" (last exit: {replica.last_exit})" if replica.last_exit else ""
        return (
            f"engine container of {replica.name} is crash-looping after"
            f" {replica.restarts} restarts{exit_info}"
        )
    return None


def stuck(replica: Replica) -> str | None:
    """Why a replica cannot start in a way a new pod would not cure (its image), or None."""
    if replica.waiting_reason in STUCK_WAITING_REASONS:
        detail = f": {replica.waiting_message}" if replica.waiting_message else ""
        return f"{replica.name}: {replica.waiting_reason}{detail}"
    return None


def replica_name(model: str, index: int) -> str:
    return f"kocoon-model-{model}-{index}"


def checkpoint_id(model: str, pod_uid: str, template_hash: str) -> str:
    """One checkpoint per replica incarnation, tagged with the template it was built from."""
    return f"{model}-{pod_uid.replace('-', '')[:12]}-{template_hash[:8]}"


def uses_checkpoints(observed: Observed) -> bool:
    return observed.spec.wake_strategy == "checkpoint" and observed.checkpoint_unavailable is None


def usable_checkpoint(observed: Observed) -> Checkpoint | None:
    """The stored checkpoint, if a wake may restore it: the strategy is `checkpoint`, it can
    work here, and the checkpoint was taken of the current pod template."""
    checkpoint = observed.checkpoint
    if checkpoint is None or not uses_checkpoints(observed):
        return None
    wanted = observed.template_hash[:8]
    if wanted and not checkpoint.id.endswith(f"-{wanted}"):
        return None
    return checkpoint


# --- the decision --------------------------------------------------------------------------


def decide(observed: Observed) -> Decision:
    previous = observed.previous
    generation_changed = (
        previous.observed_generation is not None
        and previous.observed_generation != observed.generation
    )
    failures = 0 if generation_changed else previous.failures
    scale = desired_replicas(observed)
    desired = scale.desired
    live = [r for r in observed.replicas if not r.deleting]
    failing = [(r, why) for r in live if r.index < desired and (why := broken(r))]

    if failing and failures >= MAX_REPLACEMENTS:
        if not any(r.ready and r.ip for r in live):
            return _failed(observed, scale, live, failing, failures)
        # Others still serve: keep them, and keep the failed one for its logs, unreplaced.
        failing = []

    delete: list[Replica] = [r for r, _ in failing]
    failures += len(failing)
    delete += [r for r in live if r.index >= desired]
    delete += _outdated(observed, live, desired, delete)
    checkpoint = usable_checkpoint(observed)
    # Released: a checkpoint that no longer fits; one a wake pod cannot hold for (its hold
    # failed: wake cold); and one restored already — a checkpoint is restored once, like a
    # Sandbox's, and the restored replica is checkpointed again when it scales to zero.
    release_why = _release_why(observed, checkpoint, live, failing)
    release = release_why is not None
    if release:
        checkpoint = None
    checkpointing = _to_checkpoint(observed, desired, delete, checkpoint)
    if checkpointing is not None:
        delete.remove(checkpointing)  # deleted once its checkpoint is stored
    restore = None
    for r in live:
        if r in delete or not r.held or r.restored is not None:
            continue
        if checkpoint is None or r.restore_from != checkpoint.id:
            delete.append(r)  # holds the place for a restore that will not come
        elif r.running and restore is None:
            restore = r
    staying = [r for r in live if r not in delete and r is not checkpointing]
    # An index whose pod still exists (even one going away) is not created again yet: the
    # name is the same, and a create would only answer 409.
    taken = {r.index for r in observed.replicas}
    create = tuple(i for i in range(desired) if i not in taken)
    waiting_on_deleting = (
        any(r.deleting and r.index < desired for r in observed.replicas)
        or any(r.index < desired for r in delete)
        or checkpointing is not None
    )
    # The first replica of a wake restores the checkpoint; any others start cold.
    restore_into = tuple(i for i in create if i == 0) if checkpoint is not None else ()

    ready = [r for r in staying if r.ready and r.ip]
    if ready and len(ready) >= desired and not failing:
        failures = 0
    phase = _phase(observed, desired, staying, ready)
    conditions = _conditions(observed, phase, desired, staying, ready, scale)
    wake_latency, wake_count = _wake_ended(observed, ready)
    to_sleep, to_wake, sleep_scale = _sleep_plan(observed, ready)
    if sleep_scale is not None and scale.lower_demand_since is None:
        scale = replace(
            scale, lower_demand_since=sleep_scale.lower_demand_since, due=sleep_scale.due
        )
    billed = sum(1 for r in staying if r.address)
    usage, usage_changed = account(observed, phase, billed)
    usage = replace(usage, wake_count=wake_count)
    reason, message, warning, extra = _events(observed, phase, failing, ready, wake_latency)
    return Decision(
        phase=phase,
        desired=desired,
        create=create,
        delete=tuple(delete),
        conditions=conditions,
        backends=backends(staying, observed.sleep_needs_wake),
        replicas=len(staying) + len(create),
        ready_replicas=len(ready),
        usage=usage,
        usage_changed=usage_changed or wake_latency is not None,
        phase_since=observed.now if phase != previous.phase else previous.phase_since,
        lower_demand_since=scale.lower_demand_since,
        failures=failures,
        clear_wake_request=observed.demand.wake_requested_at is not None
        and (bool(ready) or (observed.spec.replicas == 0)),
        wake_latency_seconds=wake_latency,
        reason=reason,
        message=message,
        warning=warning,
        requeue_after=_requeue(observed, scale, billed, waiting_on_deleting),
        extra_events=extra,
        checkpoint=checkpointing,
        restore=restore,
        restore_into=restore_into,
        release_checkpoint=release,
        release_message=release_why or "",
        sleep=to_sleep,
        wake=to_wake,
    )


def _sleep_plan(
    observed: Observed, ready: list[Replica]
) -> tuple[tuple[Replica, ...], tuple[Replica, ...], Scale | None]:
    """`engineSleep` where the operator sends the sleep: the replicas stay (at least one) and
    their engines sleep once demand has been gone for `scaleDownDelay` — when the deployment
    would otherwise scale to zero — and wake as soon as demand returns (a request held by the
    router, or in flight). Returns (to sleep, to wake, the scale-down the sleep waits for)."""
    spec = observed.spec
    if spec.wake_strategy != "engineSleep" or not observed.sleep_by_request:
        return (), (), None
    unfloored = replace(observed, spec=spec.model_copy(update={"wake_strategy": "coldStart"}))
    if wanted_now(unfloored) > 0:
        return (), tuple(r for r in ready if r.asleep), None
    plan = desired_replicas(unfloored)
    all_asleep = bool(ready) and all(r.asleep for r in ready)
    if plan.desired == 0 or all_asleep:
        return tuple(r for r in ready if r.asleep is not True), (), None
    return (), (), plan


def _wake_ended(observed: Observed, ready: list[Replica]) -> tuple[float | None, int]:
    """(latency, wake count) on the decision that ends a wake from zero: the first ready
    replica after Waking — or straight after ScaledToZero, when the Waking status was never
    written (the operator died after creating the pod), timed then from the wake request."""
    previous = observed.previous
    count = previous.usage.wake_count
    if not ready or previous.phase not in (ModelPhase.WAKING, ModelPhase.SCALED_TO_ZERO):
        return None, count
    since = (
        previous.phase_since
        if previous.phase is ModelPhase.WAKING
        else observed.demand.wake_requested_at
    )
    if since is None:
        return None, count + 1
    return round(max(0.0, (observed.now - since).total_seconds()), 3), count + 1


def _to_checkpoint(
    observed: Observed, desired: int, delete: list[Replica], checkpoint: Checkpoint | None
) -> Replica | None:
    """Scaling to zero with `checkpoint` and no usable checkpoint: the ready replica to
    checkpoint first (one built from the current template; a restored one counts)."""
    if desired != 0 or checkpoint is not None or not uses_checkpoints(observed):
        return None
    for replica in sorted(delete, key=lambda r: r.index):
        current = not observed.template_hash or replica.template_hash == observed.template_hash
        placeholder = replica.held and replica.restored is None
        if replica.ready and current and not placeholder and not replica.checkpoint_failed:
            return replica
    return None


def _outdated(
    observed: Observed, live: list[Replica], desired: int, deleting: list[Replica]
) -> list[Replica]:
    """Replicas built from an older template: not-ready ones go at once; ready ones one at a
    time, and only while every other wanted replica is ready on the new template."""
    wanted = observed.template_hash
    if not wanted:
        return []
    old = [
        r
        for r in live
        if r.index < desired and r not in deleting and r.template_hash not in (None, wanted)
    ]
    out = [r for r in old if not r.ready]
    serving_old = [r for r in old if r.ready]
    if serving_old and not out:
        current = [r for r in live if r.index < desired and r.template_hash == wanted and r.ready]
        if len(current) >= desired - len(serving_old):
            out.append(serving_old[0])
    return out


def _phase(
    observed: Observed, desired: int, staying: list[Replica], ready: list[Replica]
) -> ModelPhase:
    if desired == 0:
        return ModelPhase.SCALED_TO_ZERO
    if ready:
        return ModelPhase.READY if len(ready) >= desired else ModelPhase.LOADING
    if observed.previous.phase in (ModelPhase.SCALED_TO_ZERO, ModelPhase.WAKING):
        return ModelPhase.WAKING
    if any(r.scheduled for r in staying):
        return ModelPhase.LOADING
    return ModelPhase.PENDING


def _conditions(
    observed: Observed,
    phase: ModelPhase,
    desired: int,
    staying: list[Replica],
    ready: list[Replica],
    scale: Scale,
) -> tuple[ConditionUpdate, ...]:
    updates = [_ready_condition(observed, phase, desired, staying, ready)]
    unschedulable = [r for r in staying if r.unschedulable]
    if unschedulable:
        first = unschedulable[0]
        message = first.unschedulable or ""
        slice_missing = _about_the_slice(observed, message)
        updates.append(
            ConditionUpdate(
                ConditionType.POD_SCHEDULED,
                False,
                Reason.NO_NODE_OFFERS_SLICE if slice_missing else Reason.UNSCHEDULABLE,
                f"{first.name}: {message}{_gpu_hint(observed) if slice_missing else ''}",
            )
        )
    elif staying:
        updates.append(ConditionUpdate(ConditionType.POD_SCHEDULED, True, Reason.POD_SCHEDULED))
    else:
        updates.append(
            ConditionUpdate(
                ConditionType.POD_SCHEDULED, True, Reason.SCALED_TO_ZERO, "no replicas to place"
            )
        )
    updates.append(wake_strategy_condition(observed))
    return tuple(updates)


def _about_the_slice(observed: Observed, message: str) -> bool:
    """Whether the scheduler's refusal is about the GPU slice (its resource, or a DRA claim)
    rather than something else (a missing claim, a taint)."""
    gpu = observed.spec.gpu
    if gpu is None:
        return False
    if gpu.mode == "dra":
        return "claim" in message.lower() and "not found" not in message
    return any(f"Insufficient {name}" in message for name in observed.gpu_resources)


def _gpu_hint(observed: Observed) -> str:
    gpu = observed.spec.gpu
    if gpu is None:
        return ""
    if gpu.mode == "mig":
        return f" (gpu: {gpu.count} of MIG profile {gpu.profile}; no node offers it free)"
    return f" (gpu: {gpu.count} of {gpu.mode})"


def _ready_condition(
    observed: Observed,
    phase: ModelPhase,
    desired: int,
    staying: list[Replica],
    ready: list[Replica],
) -> ConditionUpdate:
    if ready:
        return ConditionUpdate(
            ConditionType.READY,
            True,
            Reason.REPLICAS_READY,
            f"{len(ready)} of {desired} replicas ready",
        )
    if phase is ModelPhase.SCALED_TO_ZERO:
        why = (
            "spec.replicas is 0"
            if observed.spec.replicas == 0
            else "scaled to zero; the next request wakes it"
        )
        return ConditionUpdate(ConditionType.READY, False, Reason.SCALED_TO_ZERO, why)
    for replica in staying:
        problem = stuck(replica)
        if problem:
            return ConditionUpdate(ConditionType.READY, False, Reason.REPLICA_FAILED, problem)
    if any(r.unschedulable for r in staying):
        return ConditionUpdate(
            ConditionType.READY, False, Reason.UNSCHEDULABLE, "no node can run a replica"
        )
    if phase is ModelPhase.WAKING:
        return ConditionUpdate(
            ConditionType.READY, False, Reason.REPLICAS_WAKING, _wake_message(observed)
        )
    if any(r.scheduled for r in staying):
        return ConditionUpdate(
            ConditionType.READY, False, Reason.REPLICAS_LOADING, "the engine is loading the model"
        )
    return ConditionUpdate(ConditionType.READY, False, Reason.POD_PENDING, "creating replicas")


def _wake_message(observed: Observed) -> str:
    if observed.demand.wake_requested_at is not None or load(observed):
        return f"waking ({observed.spec.wake_strategy}): a request arrived"
    return f"waking ({observed.spec.wake_strategy})"


def wake_strategy_condition(observed: Observed) -> ConditionUpdate:
    """Whether the wake strategy asked for works here, and what a wake does instead if not."""
    spec = observed.spec
    strategy = spec.wake_strategy
    kind = ConditionType.WAKE_STRATEGY_AVAILABLE
    if strategy == "engineSleep":
        asked = [
            r for r in observed.replicas if r.ready and not r.deleting and r.asleep is not None
        ]
        now = ""
        if asked:
            now = f"; now {sum(1 for r in asked if r.asleep)} of {len(asked)} asleep"
        if observed.sleep_by_request:
            return ConditionUpdate(
                kind,
                True,
                Reason.WAKE_STRATEGY_SUPPORTED,
                f"engineSleep: replicas stay; the operator puts {spec.engine.type} to sleep after"
                f" scaleDownDelay without requests and wakes it when demand returns{now}",
            )
        if spec.engine.type == "llamacpp":
            return ConditionUpdate(
                kind,
                True,
                Reason.WAKE_STRATEGY_SUPPORTED,
                "engineSleep: replicas stay; llama-server unloads the model when idle"
                f" (--sleep-idle-seconds) and reloads it on the next request{now}",
            )
        return ConditionUpdate(
            kind,
            False,
            Reason.WAKE_STRATEGY_UNSUPPORTED,
            f"engineSleep for {spec.engine.type}: this operator does not put the engine to"
            " sleep yet; replicas stay awake (at least one)",
        )
    if strategy == "checkpoint":
        if observed.checkpoint_unavailable is None:
            stored = usable_checkpoint(observed)
            now = (
                f"; checkpoint {stored.id} on {stored.node}"
                if stored is not None
                else "; none stored yet"
            )
            return ConditionUpdate(
                kind,
                True,
                Reason.WAKE_STRATEGY_SUPPORTED,
                "checkpoint: a ready replica is checkpointed before scaling to zero and restored"
                f" on the next wake{now}",
            )
        reason = (
            Reason.CUDA_CHECKPOINT_MISSING
            if spec.gpu is not None and "cuda-checkpoint" in observed.checkpoint_unavailable
            else Reason.WAKE_STRATEGY_UNSUPPORTED
        )
        return ConditionUpdate(
            kind,
            False,
            reason,
            f"checkpoint: {observed.checkpoint_unavailable}; replicas wake cold (coldStart)",
        )
    return ConditionUpdate(
        kind, True, Reason.WAKE_STRATEGY_SUPPORTED, "coldStart: a wake starts the engine"
    )


def _failed(
    observed: Observed,
    scale: Scale,
    live: list[Replica],
    failing: list[tuple[Replica, str]],
    failures: int,
) -> Decision:
    """Replaced too often: stop replacing, keep the failed pod for its logs, say why."""
    why = failing[0][1]
    message = f"{why}; replaced {failures} times, giving up until the spec changes"
    surplus = tuple(r for r in live if r.index >= scale.desired)
    staying = [r for r in live if r not in surplus]
    previous = observed.previous
    billed = sum(1 for r in staying if r.address)
    usage, usage_changed = account(observed, ModelPhase.FAILED, billed)
    changed = previous.phase is not ModelPhase.FAILED
    return Decision(
        phase=ModelPhase.FAILED,
        desired=scale.desired,
        delete=surplus,
        conditions=(
            ConditionUpdate(ConditionType.READY, False, Reason.REPLICA_FAILED, message),
            wake_strategy_condition(observed),
        ),
        backends=backends(staying, observed.sleep_needs_wake),
        replicas=len(staying),
        ready_replicas=sum(1 for r in staying if r.ready and r.ip),
        usage=replace(usage, wake_count=previous.usage.wake_count),
        usage_changed=usage_changed,
        phase_since=observed.now if changed else previous.phase_since,
        lower_demand_since=scale.lower_demand_since,
        failures=failures,
        clear_wake_request=observed.demand.wake_requested_at is not None,
        reason=Reason.REPLICA_FAILED if changed else None,
        message=message,
        warning=True,
        requeue_after=_requeue(observed, scale, billed, False),
    )


def backends(staying: list[Replica], sleep_needs_wake: bool = False) -> tuple[Backend, ...]:
    """Every replica with an address, by index; `ready` says whether to send it requests, and
    `sleeping` that it sleeps and must be woken first (an engine that wakes by itself on a
    request is never marked: the router may send it one)."""
    return tuple(
        Backend(
            pod=r.name,
            address=r.address,
            ready=r.ready,
            sleeping=bool(r.asleep) and sleep_needs_wake,
        )
        for r in sorted(staying, key=lambda r: r.index)
        if r.address
    )


def account(observed: Observed, phase: ModelPhase, billed_now: int) -> tuple[Usage, bool]:
    """Add the time since the last accounting, times the replicas billed then; written on a
    transition (phase or replica count) and otherwise at most once a minute."""
    previous = observed.previous
    usage = previous.usage
    now = observed.now
    if usage.accounted_until is None:
        return replace(usage, accounted_until=now), True
    elapsed = max(0.0, (now - usage.accounted_until).total_seconds())
    transition = phase != previous.phase or billed_now != previous.billed_replicas
    if not transition and elapsed < ACCOUNTING_STEP_SECONDS:
        return usage, False
    gpu = observed.spec.gpu
    gpu_per_replica = gpu.count if gpu is not None else 0
    replica_seconds = elapsed * previous.billed_replicas
    return (
        replace(
            usage,
            replica_seconds=round(usage.replica_seconds + replica_seconds, 3),
            gpu_seconds=round(usage.gpu_seconds + replica_seconds * gpu_per_replica, 3),
            accounted_until=now,
        ),
        True,
    )


def _events(
    observed: Observed,
    phase: ModelPhase,
    failing: list[tuple[Replica, str]],
    ready: list[Replica],
    wake_latency: float | None,
) -> tuple[Reason | None, str, bool, tuple[tuple[Reason, str], ...]]:
    extra = tuple((Reason.REPLICA_FAILED, f"replacing: {why}") for _, why in failing)
    previous = observed.previous.phase
    if phase == previous:
        return None, "", False, extra
    if phase is ModelPhase.SCALED_TO_ZERO:
        return Reason.SCALED_TO_ZERO, "scaled to zero", False, extra
    if phase is ModelPhase.WAKING:
        return Reason.REPLICAS_WAKING, _wake_message(observed), False, extra
    if phase is ModelPhase.READY:
        if wake_latency is not None:
            return Reason.REPLICAS_READY, f"woke in {wake_latency:.3f} s", False, extra
        return Reason.REPLICAS_READY, f"{len(ready)} replicas ready", False, extra
    return None, "", False, extra


def _requeue(
    observed: Observed, scale: Scale, billed: int, waiting_on_deleting: bool
) -> float | None:
    candidates: list[float] = []
    now = observed.now
    if scale.due is not None:
        candidates.append((scale.due - now).total_seconds())
    if billed or observed.previous.billed_replicas:
        candidates.append(ACCOUNTING_STEP_SECONDS)
    if waiting_on_deleting:
        candidates.append(DELETING_POLL_SECONDS)
    if observed.spec.wake_strategy == "engineSleep" and billed:
        candidates.append(ENGINE_SLEEP_POLL_SECONDS)
    until = observed.demand.in_flight_valid_until
    if observed.demand.in_flight > 0 and until is not None and until > now:
        candidates.append((until - now).total_seconds())
    if not candidates:
        return None
    return max(0.1, min(candidates))
