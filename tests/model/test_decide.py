"""The ModelDeployment life, decided purely: autoscaling, waking, failures, metering."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kocoon.api.conditions import ConditionType, ModelPhase, Reason
from kocoon.api.model import ModelDeploymentSpec
from kocoon.api.sandbox import Checkpoint
from kocoon.decide import model
from kocoon.decide.model import Demand, Previous, Replica, Usage
from kocoon.status import ConditionUpdate

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
NAME = "m"


def spec(**fields: Any) -> ModelDeploymentSpec:
    base: dict[str, Any] = {
        "model": {"uri": "oci://kocoon.local/smollm2:local"},
        "engine": {"type": "llamacpp"},
        "scaling": SCALING,
    }
    base.update(fields)
    return ModelDeploymentSpec.model_validate(base)


def replica(index: int = 0, **fields: Any) -> Replica:
    """A ready, running replica unless told otherwise."""
    base: dict[str, Any] = {
        "name": model.replica_name(NAME, index),
        "index": index,
        "uid": f"uid-{index}",
        "phase": "Running",
        "ready": True,
        "ip": f"127.1.1.{index + 1}",
        "node": "kwok-cpu-0",
    }
    base.update(fields)
    return Replica(**base)


def observe(
    *replicas: Replica,
    demand: Demand | None = None,
    previous: Previous | None = None,
    generation: int = 1,
    now: datetime = NOW,
    template_hash: str = "",
    checkpoint_unavailable: str | None = None,
    gpu_resources: tuple[str, ...] = (),
    sleep_needs_wake: bool = False,
    checkpoint: Checkpoint | None = None,
    sleep_by_request: bool = False,
    **spec_fields: Any,
) -> model.Observed:
    return model.Observed(
        name=NAME,
        spec=spec(**spec_fields),
        generation=generation,
        replicas=replicas,
        demand=demand or Demand(),
        previous=previous or Previous(),
        now=now,
        template_hash=template_hash,
        checkpoint_unavailable=checkpoint_unavailable,
        gpu_resources=gpu_resources,
        sleep_needs_wake=sleep_needs_wake,
        checkpoint=checkpoint,
        sleep_by_request=sleep_by_request,
    )


def condition(decision: model.Decision, kind: ConditionType) -> ConditionUpdate:
    found = [c for c in decision.conditions if c.type == kind]
    assert found, f"no {kind} condition in {decision.conditions}"
    return found[0]


SCALING = {"minReplicas": 0, "maxReplicas": 4, "targetConcurrency": 8, "scaleDownDelay": "60s"}


def ready_previous(desired: int, **fields: Any) -> Previous:
    base: dict[str, Any] = {
        "phase": ModelPhase.READY,
        "phase_since": NOW - timedelta(minutes=10),
        "observed_generation": 1,
        "desired": desired,
        "billed_replicas": desired,
        "usage": Usage(accounted_until=NOW - timedelta(seconds=5)),
    }
    base.update(fields)
    return Previous(**base)


# --- from nothing ---------------------------------------------------------------------------


def test_a_new_deployment_at_min_zero_is_scaled_to_zero_with_no_pods() -> None:
    decision = model.decide(observe(scaling=SCALING))
    assert decision.phase is ModelPhase.SCALED_TO_ZERO
    assert decision.desired == 0
    assert decision.create == ()
    assert decision.delete == ()
    ready = condition(decision, ConditionType.READY)
    assert (ready.status, ready.reason) == (False, Reason.SCALED_TO_ZERO)
    assert decision.backends == ()
    assert decision.replicas == 0
    assert decision.requeue_after is None  # nothing runs, nothing is due


def test_a_new_deployment_at_min_one_creates_its_replica_and_goes_pending_loading_ready() -> None:
    scaling = {**SCALING, "minReplicas": 1}
    first = model.decide(observe(scaling=scaling))
    assert first.phase is ModelPhase.PENDING
    assert first.create == (0,)
    assert first.replicas == 1
    assert condition(first, ConditionType.READY).reason == Reason.POD_PENDING

    previous = Previous(phase=ModelPhase.PENDING, phase_since=NOW, desired=1)
    loading = model.decide(
        observe(replica(ready=False), previous=previous, scaling=scaling),
    )
    assert loading.phase is ModelPhase.LOADING
    assert loading.create == ()
    assert condition(loading, ConditionType.READY).reason == Reason.REPLICAS_LOADING
    assert loading.backends == (model.Backend("kocoon-model-m-0", "127.1.1.1:8000", False),)

    ready = model.decide(
        observe(replica(), previous=replace_phase(previous, ModelPhase.LOADING), scaling=scaling)
    )
    assert ready.phase is ModelPhase.READY
    assert ready.ready_replicas == 1
    assert ready.backends == (model.Backend("kocoon-model-m-0", "127.1.1.1:8000", True),)
    assert condition(ready, ConditionType.READY).status is True
    assert ready.wake_latency_seconds is None  # a first start is not a wake


def replace_phase(previous: Previous, phase: ModelPhase) -> Previous:
    return replace(previous, phase=phase)


# --- waking from zero -----------------------------------------------------------------------


def test_a_wake_request_at_zero_creates_one_replica_and_the_first_ready_one_ends_the_wake() -> None:
    at_zero = Previous(
        phase=ModelPhase.SCALED_TO_ZERO, phase_since=NOW - timedelta(hours=1), desired=0
    )
    wake = Demand(wake_requested_at=NOW - timedelta(seconds=1))
    waking = model.decide(observe(demand=wake, previous=at_zero, scaling=SCALING))
    assert waking.phase is ModelPhase.WAKING
    assert waking.create == (0,)
    assert waking.reason is Reason.REPLICAS_WAKING
    assert not waking.clear_wake_request  # the router holds requests until a replica is ready

    started = NOW
    later = NOW + timedelta(seconds=2.5)
    previous = Previous(phase=ModelPhase.WAKING, phase_since=started, desired=1)
    still = model.decide(
        observe(replica(ready=False), demand=wake, previous=previous, now=later, scaling=SCALING)
    )
    assert still.phase is ModelPhase.WAKING
    assert still.wake_latency_seconds is None

    woke = model.decide(
        observe(replica(), demand=wake, previous=previous, now=later, scaling=SCALING)
    )
    assert woke.phase is ModelPhase.READY
    assert woke.wake_latency_seconds == 2.5
    assert woke.usage.wake_count == 1
    assert woke.usage_changed
    assert woke.clear_wake_request
    assert woke.message == "woke in 2.500 s"


def test_requests_held_by_the_router_wake_a_model_without_a_wake_annotation() -> None:
    at_zero = Previous(phase=ModelPhase.SCALED_TO_ZERO, desired=0)
    decision = model.decide(observe(demand=Demand(queued=3), previous=at_zero, scaling=SCALING))
    assert decision.phase is ModelPhase.WAKING
    assert decision.create == (0,)


def test_a_stale_wake_request_on_a_ready_model_is_cleared() -> None:
    decision = model.decide(
        observe(
            replica(),
            demand=Demand(wake_requested_at=NOW),
            previous=ready_previous(1),
            scaling=SCALING,
        )
    )
    assert decision.phase is ModelPhase.READY
    assert decision.clear_wake_request


# --- the built-in autoscaler ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_flight", "queued", "expected"),
    [(0, 0, 0), (1, 0, 1), (8, 0, 1), (9, 0, 2), (17, 0, 3), (10, 7, 3), (100, 0, 4), (0, 1, 1)],
)
def test_demand_sizes_replicas_as_ceil_load_over_target_within_bounds(
    in_flight: int, queued: int, expected: int
) -> None:
    demand = Demand(in_flight=in_flight, queued=queued)
    scale = model.desired_replicas(observe(demand=demand, scaling=SCALING))
    assert scale.desired == expected


def test_min_replicas_is_a_floor_and_max_a_ceiling() -> None:
    scaling = {**SCALING, "minReplicas": 2, "maxReplicas": 3}
    assert model.desired_replicas(observe(scaling=scaling)).desired == 2
    busy = Demand(in_flight=1000)
    assert model.desired_replicas(observe(demand=busy, scaling=scaling)).desired == 3


def test_an_in_flight_count_the_router_stopped_renewing_is_no_demand() -> None:
    stale = Demand(in_flight=20, in_flight_valid_until=NOW - timedelta(seconds=1))
    fresh = Demand(in_flight=20, in_flight_valid_until=NOW + timedelta(seconds=30))
    assert model.desired_replicas(observe(demand=stale, scaling=SCALING)).desired == 0
    assert model.desired_replicas(observe(demand=fresh, scaling=SCALING)).desired == 3
    decision = model.decide(observe(demand=fresh, scaling=SCALING))
    assert decision.requeue_after == pytest.approx(30)  # when it goes stale


def test_scale_up_is_immediate_and_creates_the_missing_indices() -> None:
    decision = model.decide(
        observe(
            replica(0),
            demand=Demand(in_flight=20),
            previous=ready_previous(1),
            scaling=SCALING,
        )
    )
    assert decision.desired == 3
    assert decision.create == (1, 2)
    assert decision.phase is ModelPhase.LOADING  # one of three ready; the router still serves it
    assert decision.lower_demand_since is None


def test_scale_down_waits_for_scale_down_delay_of_lower_demand() -> None:
    two = (replica(0), replica(1))
    quiet = Demand(in_flight=3, last_request=NOW)
    first = model.decide(observe(*two, demand=quiet, previous=ready_previous(2), scaling=SCALING))
    assert first.desired == 2
    assert first.delete == ()
    assert first.lower_demand_since == NOW
    assert first.requeue_after == pytest.approx(60)

    mid = NOW + timedelta(seconds=59)
    previous = ready_previous(2, lower_demand_since=NOW)
    waiting = model.decide(observe(*two, demand=quiet, previous=previous, now=mid, scaling=SCALING))
    assert waiting.desired == 2
    assert waiting.delete == ()
    assert waiting.requeue_after == pytest.approx(1)

    due = NOW + timedelta(seconds=60)
    down = model.decide(observe(*two, demand=quiet, previous=previous, now=due, scaling=SCALING))
    assert down.desired == 1
    assert [r.name for r in down.delete] == ["kocoon-model-m-1"]  # the highest index goes
    assert model.deletion_grace_seconds(down) is None  # drained: the other replica serves on
    assert down.backends == (model.Backend("kocoon-model-m-0", "127.1.1.1:8000", True),)
    assert down.lower_demand_since is None


def test_demand_returning_cancels_a_pending_scale_down() -> None:
    two = (replica(0), replica(1))
    previous = ready_previous(2, lower_demand_since=NOW - timedelta(seconds=50))
    decision = model.decide(
        observe(*two, demand=Demand(in_flight=12), previous=previous, scaling=SCALING)
    )
    assert decision.desired == 2
    assert decision.lower_demand_since is None


def test_scale_to_zero_counts_the_delay_from_the_last_request() -> None:
    previous = ready_previous(1, lower_demand_since=NOW - timedelta(minutes=10))
    recent = Demand(last_request=NOW - timedelta(seconds=30))
    kept = model.decide(observe(replica(), demand=recent, previous=previous, scaling=SCALING))
    assert kept.desired == 1
    assert kept.phase is ModelPhase.READY
    assert kept.requeue_after == pytest.approx(30)

    idle = Demand(last_request=NOW - timedelta(seconds=61))
    gone = model.decide(observe(replica(), demand=idle, previous=previous, scaling=SCALING))
    assert gone.desired == 0
    assert gone.phase is ModelPhase.SCALED_TO_ZERO
    assert [r.name for r in gone.delete] == ["kocoon-model-m-0"]
    assert gone.backends == ()
    assert gone.reason is Reason.SCALED_TO_ZERO
    # Nothing is in flight at zero: the replica goes without the engine's drain.
    assert model.deletion_grace_seconds(gone) == model.SCALE_TO_ZERO_GRACE_SECONDS


def test_spec_replicas_is_obeyed_over_demand() -> None:
    decision = model.decide(
        observe(
            replica(0),
            demand=Demand(in_flight=100),
            previous=ready_previous(1),
            replicas=2,
            scaling=SCALING,
        )
    )
    assert decision.desired == 2
    assert decision.create == (1,)
    down = model.decide(
        observe(replica(0), replica(1), previous=ready_previous(2), replicas=1, scaling=SCALING)
    )
    assert down.desired == 1  # no delay: whoever set spec.replicas decided
    assert [r.index for r in down.delete] == [1]


def test_spec_replicas_zero_keeps_it_at_zero_and_drops_wake_requests() -> None:
    at_zero = Previous(phase=ModelPhase.SCALED_TO_ZERO, desired=0)
    decision = model.decide(
        observe(
            demand=Demand(wake_requested_at=NOW),
            previous=at_zero,
            replicas=0,
            scaling=SCALING,
        )
    )
    assert decision.phase is ModelPhase.SCALED_TO_ZERO
    assert decision.create == ()
    assert decision.clear_wake_request
    assert condition(decision, ConditionType.READY).message == "spec.replicas is 0"


def test_a_replica_deleted_by_hand_is_created_again() -> None:
    decision = model.decide(observe(replica(0), previous=ready_previous(2), replicas=2))
    assert decision.create == (1,)


def test_an_index_whose_pod_is_still_going_is_not_created_until_it_is_gone() -> None:
    decision = model.decide(
        observe(replica(0), replica(1, deleting=True), previous=ready_previous(2), replicas=2)
    )
    assert decision.create == ()
    assert decision.requeue_after == pytest.approx(model.DELETING_POLL_SECONDS)
    # A pod going away is not a backend: the router must not pick it.
    assert [b.pod for b in decision.backends] == ["kocoon-model-m-0"]


# --- failures -------------------------------------------------------------------------------


def crash_looping(index: int = 0, restarts: int = model.CRASH_LOOP_RESTARTS) -> Replica:
    return replica(
        index,
        ready=False,
        restarts=restarts,
        waiting_reason="CrashLoopBackOff",
        last_exit="Error (exit code 1): failed to load model",
    )


def test_a_crash_looping_replica_is_replaced_and_counted() -> None:
    previous = ready_previous(1, failures=1)
    decision = model.decide(observe(crash_looping(), previous=previous, replicas=1))
    assert [r.name for r in decision.delete] == ["kocoon-model-m-0"]
    assert decision.failures == 2
    assert decision.create == ()  # the same name: created once the old pod is gone
    assert decision.phase is not ModelPhase.FAILED
    assert any("crash-looping" in message for _, message in decision.extra_events)


def test_a_replica_restarting_fewer_times_is_left_to_the_kubelet() -> None:
    decision = model.decide(
        observe(crash_looping(restarts=1), previous=ready_previous(1), replicas=1)
    )
    assert decision.delete == ()
    assert decision.failures == 0


def test_an_evicted_replica_is_replaced() -> None:
    evicted = replica(ready=False, phase="Failed", failed_reason="Evicted: node memory pressure")
    decision = model.decide(observe(evicted, previous=ready_previous(1), replicas=1))
    assert [r.name for r in decision.delete] == ["kocoon-model-m-0"]
    assert decision.failures == 1


def test_after_max_replacements_the_deployment_is_failed_with_the_containers_reason() -> None:
    previous = ready_previous(1, failures=model.MAX_REPLACEMENTS)
    decision = model.decide(
        observe(
            crash_looping(),
            demand=Demand(wake_requested_at=NOW),
            previous=previous,
            replicas=1,
        )
    )
    assert decision.phase is ModelPhase.FAILED
    assert decision.delete == ()  # kept for its logs
    assert decision.create == ()
    ready = condition(decision, ConditionType.READY)
    assert (ready.status, ready.reason) == (False, Reason.REPLICA_FAILED)
    assert "failed to load model" in ready.message
    assert "Error (exit code 1)" in ready.message
    assert decision.clear_wake_request  # the router stops holding requests for it
    assert decision.reason is Reason.REPLICA_FAILED
    assert decision.warning


def test_failed_is_not_declared_while_another_replica_serves() -> None:
    previous = ready_previous(2, failures=model.MAX_REPLACEMENTS)
    decision = model.decide(observe(replica(0), crash_looping(1), previous=previous, replicas=2))
    assert decision.phase is ModelPhase.LOADING
    assert decision.delete == ()


def test_a_spec_change_resets_the_failure_count() -> None:
    previous = ready_previous(1, failures=model.MAX_REPLACEMENTS, phase=ModelPhase.FAILED)
    decision = model.decide(observe(crash_looping(), previous=previous, generation=2, replicas=1))
    assert decision.phase is not ModelPhase.FAILED
    assert decision.failures == 1
    assert [r.index for r in decision.delete] == [0]


def test_all_replicas_ready_resets_the_failure_count() -> None:
    decision = model.decide(observe(replica(), previous=ready_previous(1, failures=2), replicas=1))
    assert decision.failures == 0


def test_an_image_that_cannot_be_pulled_is_reported_not_replaced() -> None:
    pulling = replica(
        ready=False,
        waiting_reason="ImagePullBackOff",
        waiting_message='Back-off pulling image "nope:1"',
    )
    decision = model.decide(
        observe(pulling, previous=Previous(phase=ModelPhase.LOADING, desired=1), replicas=1)
    )
    assert decision.delete == ()
    ready = condition(decision, ConditionType.READY)
    assert ready.reason == Reason.REPLICA_FAILED
    assert "ImagePullBackOff" in ready.message
    assert "nope:1" in ready.message


def test_a_gpu_slice_no_node_offers_is_a_condition_naming_the_profile() -> None:
    message = "0/6 nodes are available: 6 Insufficient nvidia.com/mig-2g.20gb."
    pending = replica(ready=False, ip=None, node=None, phase="Pending", unschedulable=message)
    decision = model.decide(
        observe(
            pending,
            previous=Previous(phase=ModelPhase.PENDING, desired=1),
            replicas=1,
            gpu={"mode": "mig", "profile": "2g.20gb"},
            gpu_resources=("nvidia.com/mig-2g.20gb",),
        )
    )
    assert decision.phase is ModelPhase.PENDING
    scheduled = condition(decision, ConditionType.POD_SCHEDULED)
    assert (scheduled.status, scheduled.reason) == (False, Reason.NO_NODE_OFFERS_SLICE)
    assert "2g.20gb" in scheduled.message
    assert message in scheduled.message
    assert condition(decision, ConditionType.READY).reason == Reason.UNSCHEDULABLE
    assert decision.backends == ()


# --- metering -------------------------------------------------------------------------------


def test_usage_starts_counting_at_the_first_decision() -> None:
    decision = model.decide(observe(scaling=SCALING))
    assert decision.usage == Usage(accounted_until=NOW)
    assert decision.usage_changed


def test_usage_is_written_at_most_once_a_minute_while_nothing_changes() -> None:
    start = NOW - timedelta(seconds=30)
    previous = ready_previous(2, usage=Usage(replica_seconds=100, accounted_until=start))
    two = (replica(0), replica(1))
    quiet = model.decide(observe(*two, previous=previous, replicas=2, gpu={"mode": "wholeGPU"}))
    assert not quiet.usage_changed
    assert quiet.usage.replica_seconds == 100
    assert quiet.requeue_after == pytest.approx(model.ACCOUNTING_STEP_SECONDS)

    later = NOW + timedelta(seconds=31)  # 61 s since the last accounting
    counted = model.decide(
        observe(
            *two, previous=previous, now=later, replicas=2, gpu={"mode": "wholeGPU", "count": 2}
        )
    )
    assert counted.usage_changed
    assert counted.usage.replica_seconds == pytest.approx(100 + 61 * 2)
    assert counted.usage.gpu_seconds == pytest.approx(61 * 2 * 2)
    assert counted.usage.accounted_until == later


def test_usage_is_accounted_on_a_transition_for_the_replicas_billed_before_it() -> None:
    previous = ready_previous(
        1,
        usage=Usage(accounted_until=NOW - timedelta(seconds=10)),
        lower_demand_since=NOW - timedelta(minutes=5),
    )
    idle = Demand(last_request=NOW - timedelta(minutes=5))
    decision = model.decide(observe(replica(), demand=idle, previous=previous, scaling=SCALING))
    assert decision.phase is ModelPhase.SCALED_TO_ZERO
    assert decision.usage_changed
    assert decision.usage.replica_seconds == pytest.approx(10)
    assert decision.usage.gpu_seconds == 0  # no GPU slice


def test_nothing_to_write_at_zero() -> None:
    previous = Previous(
        phase=ModelPhase.SCALED_TO_ZERO,
        observed_generation=1,
        desired=0,
        usage=Usage(replica_seconds=5, accounted_until=NOW - timedelta(seconds=20)),
    )
    decision = model.decide(observe(previous=previous, scaling=SCALING))
    assert not decision.usage_changed
    assert decision.requeue_after is None
    assert decision.reason is None


# --- templates and wake strategies ----------------------------------------------------------


def test_replicas_of_an_older_template_are_replaced_one_ready_one_at_a_time() -> None:
    old = (replica(0, template_hash="a"), replica(1, template_hash="a"))
    decision = model.decide(
        observe(*old, previous=ready_previous(2), replicas=2, template_hash="b")
    )
    assert [r.index for r in decision.delete] == [0]
    next_step = model.decide(
        observe(
            replica(0, template_hash="b", ready=False),
            replica(1, template_hash="a"),
            previous=ready_previous(2),
            replicas=2,
            template_hash="b",
        )
    )
    assert next_step.delete == ()  # index 0 is not ready on the new template yet
    unready_old = model.decide(
        observe(
            replica(0, template_hash="a", ready=False),
            previous=ready_previous(1),
            replicas=1,
            template_hash="b",
        )
    )
    assert [r.index for r in unready_old.delete] == [0]


def test_engine_sleep_on_llamacpp_keeps_a_replica_and_says_the_engine_sleeps() -> None:
    idle = Demand(last_request=NOW - timedelta(hours=1))
    decision = model.decide(
        observe(
            replica(),
            demand=idle,
            previous=ready_previous(1, lower_demand_since=NOW - timedelta(hours=1)),
            scaling=SCALING,
            wakeStrategy="engineSleep",
        )
    )
    assert decision.desired == 1
    assert decision.phase is ModelPhase.READY
    wake = condition(decision, ConditionType.WAKE_STRATEGY_AVAILABLE)
    assert wake.status is True
    assert "--sleep-idle-seconds" in wake.message


def test_engine_sleep_for_a_gpu_engine_says_it_is_not_done_here() -> None:
    decision = model.decide(
        observe(scaling=SCALING, wakeStrategy="engineSleep", engine={"type": "vllm"})
    )
    wake = condition(decision, ConditionType.WAKE_STRATEGY_AVAILABLE)
    assert (wake.status, wake.reason) == (False, Reason.WAKE_STRATEGY_UNSUPPORTED)
    assert "vllm" in wake.message


def test_a_checkpoint_wake_that_cannot_work_here_falls_back_to_cold_with_the_reason() -> None:
    decision = model.decide(
        observe(
            scaling=SCALING,
            wakeStrategy="checkpoint",
            checkpoint_unavailable="no Kocoon agent serves node kwok-cpu-0",
        )
    )
    wake = condition(decision, ConditionType.WAKE_STRATEGY_AVAILABLE)
    assert (wake.status, wake.reason) == (False, Reason.WAKE_STRATEGY_UNSUPPORTED)
    assert "no Kocoon agent serves node kwok-cpu-0" in wake.message
    assert "coldStart" in wake.message
    gpu = model.decide(
        observe(
            scaling=SCALING,
            wakeStrategy="checkpoint",
            engine={"type": "vllm"},
            gpu={"mode": "wholeGPU"},
            checkpoint_unavailable="cuda-checkpoint is not installed on node g1",
        )
    )
    assert condition(gpu, ConditionType.WAKE_STRATEGY_AVAILABLE).reason == (
        Reason.CUDA_CHECKPOINT_MISSING
    )


def test_cold_start_is_always_available() -> None:
    wake = condition(model.decide(observe(scaling=SCALING)), ConditionType.WAKE_STRATEGY_AVAILABLE)
    assert (wake.status, wake.reason) == (True, Reason.WAKE_STRATEGY_SUPPORTED)


def test_a_replica_unschedulable_for_another_reason_is_not_blamed_on_the_slice() -> None:
    message = '0/6 nodes are available: persistentvolumeclaim "weights" not found.'
    pending = replica(ready=False, ip=None, node=None, phase="Pending", unschedulable=message)
    decision = model.decide(
        observe(
            pending,
            previous=Previous(phase=ModelPhase.PENDING, desired=1),
            replicas=1,
            gpu={"mode": "mig", "profile": "2g.20gb"},
            gpu_resources=("nvidia.com/mig-2g.20gb",),
        )
    )
    scheduled = condition(decision, ConditionType.POD_SCHEDULED)
    assert scheduled.reason == Reason.UNSCHEDULABLE
    assert scheduled.message == f"kocoon-model-m-0: {message}"


def test_a_sleeping_llama_server_is_reported_and_still_gets_requests() -> None:
    decision = model.decide(
        observe(
            replica(asleep=True),
            previous=ready_previous(1),
            wakeStrategy="engineSleep",
        )
    )
    assert decision.backends == (model.Backend("kocoon-model-m-0", "127.1.1.1:8000", True),)
    wake = condition(decision, ConditionType.WAKE_STRATEGY_AVAILABLE)
    assert wake.message.endswith("now 1 of 1 asleep")
    assert decision.requeue_after == pytest.approx(model.ENGINE_SLEEP_POLL_SECONDS)


def test_a_sleeping_engine_that_needs_a_wake_is_marked_for_the_router() -> None:
    decision = model.decide(
        observe(
            replica(0, asleep=True),
            replica(1, asleep=False),
            previous=ready_previous(2),
            replicas=2,
            wakeStrategy="engineSleep",
            engine={"type": "vllm"},
            sleep_needs_wake=True,
        )
    )
    assert [(b.pod, b.sleeping) for b in decision.backends] == [
        ("kocoon-model-m-0", True),
        ("kocoon-model-m-1", False),
    ]


# --- checkpoint wakes -----------------------------------------------------------------------

TEMPLATE = "0123456789abcdef"


def stored(pod_uid: str = "uid-0", template: str = TEMPLATE) -> Checkpoint:
    return Checkpoint(
        id=model.checkpoint_id(NAME, pod_uid, template), node="real-0", driver="containerd"
    )


def checkpointed(*replicas: Replica, checkpoint: Checkpoint | None = None, **kw: Any) -> Any:
    return model.decide(
        observe(
            *replicas,
            template_hash=TEMPLATE,
            wakeStrategy="checkpoint",
            checkpoint=checkpoint,
            **kw,
        )
    )


def test_scaling_to_zero_checkpoints_the_ready_replica_before_deleting_it() -> None:
    idle = Demand(last_request=NOW - timedelta(minutes=5))
    previous = ready_previous(1, lower_demand_since=NOW - timedelta(minutes=5))
    warm = replica(template_hash=TEMPLATE)
    decision = checkpointed(warm, demand=idle, previous=previous)
    assert decision.phase is ModelPhase.SCALED_TO_ZERO
    assert decision.checkpoint == warm
    assert decision.delete == ()  # deleted once the checkpoint is stored
    assert decision.backends == ()  # no request goes to a replica being checkpointed
    assert decision.requeue_after == pytest.approx(model.DELETING_POLL_SECONDS)

    done = checkpointed(warm, demand=idle, previous=previous, checkpoint=stored())
    assert done.checkpoint is None
    assert done.delete == (warm,)
    assert not done.release_checkpoint


def test_a_replica_whose_checkpoint_failed_scales_down_without_one() -> None:
    idle = Demand(last_request=NOW - timedelta(minutes=5))
    previous = ready_previous(1, lower_demand_since=NOW - timedelta(minutes=5))
    failed = replica(template_hash=TEMPLATE, checkpoint_failed=True)
    decision = checkpointed(failed, demand=idle, previous=previous)
    assert decision.checkpoint is None
    assert decision.delete == (failed,)


def test_a_wake_with_a_checkpoint_creates_a_held_pod_and_restores_into_it() -> None:
    at_zero = Previous(phase=ModelPhase.SCALED_TO_ZERO, desired=0)
    wake = Demand(wake_requested_at=NOW)
    first = checkpointed(demand=wake, previous=at_zero, checkpoint=stored())
    assert first.phase is ModelPhase.WAKING
    assert first.create == (0,)
    assert first.restore_into == (0,)

    waking = Previous(phase=ModelPhase.WAKING, phase_since=NOW, desired=1)
    held = replica(
        ready=False,
        running=False,
        held=True,
        restore_from=stored().id,
        template_hash=TEMPLATE,
    )
    starting = checkpointed(held, demand=wake, previous=waking, checkpoint=stored())
    assert starting.restore is None  # its container is not up yet
    assert starting.phase is ModelPhase.WAKING

    up = replace(held, running=True)
    restoring = checkpointed(up, demand=wake, previous=waking, checkpoint=stored())
    assert restoring.restore == up
    assert restoring.delete == ()
    assert restoring.phase is ModelPhase.WAKING  # not ready before the restore

    restored = replace(up, ready=True, restored=stored().id)
    woke = checkpointed(
        restored, demand=wake, previous=waking, checkpoint=stored(), now=NOW + timedelta(seconds=1)
    )
    assert woke.phase is ModelPhase.READY
    assert woke.restore is None
    assert woke.wake_latency_seconds == 1.0
    assert woke.release_checkpoint  # spent: restored once, like a Sandbox's
    assert "was restored" in woke.release_message

    # The restored replica is what the next scale-down checkpoints.
    idle = Demand(last_request=NOW - timedelta(minutes=5))
    previous = ready_previous(1, lower_demand_since=NOW - timedelta(minutes=5))
    again = checkpointed(restored, demand=idle, previous=previous)
    assert again.checkpoint == restored


def test_a_checkpoint_of_another_template_is_released_and_the_wake_is_cold() -> None:
    at_zero = Previous(phase=ModelPhase.SCALED_TO_ZERO, desired=0)
    old = stored(template="ffffffffffffffff")
    decision = checkpointed(demand=Demand(wake_requested_at=NOW), previous=at_zero, checkpoint=old)
    assert decision.release_checkpoint
    assert "no longer fits the spec" in decision.release_message
    assert decision.create == (0,)
    assert decision.restore_into == ()


def test_a_held_pod_that_cannot_hold_releases_the_checkpoint_and_wakes_cold() -> None:
    waking = Previous(phase=ModelPhase.WAKING, phase_since=NOW, desired=1)
    crashing = replica(
        ready=False,
        held=True,
        restore_from=stored().id,
        template_hash=TEMPLATE,
        restarts=model.CRASH_LOOP_RESTARTS,
        waiting_reason="CrashLoopBackOff",
    )
    decision = checkpointed(
        crashing, demand=Demand(wake_requested_at=NOW), previous=waking, checkpoint=stored()
    )
    assert decision.release_checkpoint
    assert "could not hold" in decision.release_message
    assert decision.delete == (crashing,)
    assert decision.restore is None


def test_checkpoints_are_not_used_where_they_cannot_work() -> None:
    at_zero = Previous(phase=ModelPhase.SCALED_TO_ZERO, desired=0)
    decision = checkpointed(
        demand=Demand(wake_requested_at=NOW),
        previous=at_zero,
        checkpoint=stored(),
        checkpoint_unavailable="no Kocoon agent serves node real-0",
    )
    assert decision.restore_into == ()
    assert decision.release_checkpoint


def test_a_wake_whose_waking_status_was_never_written_is_still_counted() -> None:
    """The operator died after creating the wake's pod: the next decision sees the replica
    ready while the last status still says ScaledToZero."""
    at_zero = Previous(
        phase=ModelPhase.SCALED_TO_ZERO, phase_since=NOW - timedelta(hours=1), desired=0
    )
    wake = Demand(wake_requested_at=NOW - timedelta(seconds=3))
    decision = model.decide(observe(replica(), demand=wake, previous=at_zero))
    assert decision.phase is ModelPhase.READY
    assert decision.usage.wake_count == 1
    assert decision.wake_latency_seconds == 3.0
    assert decision.clear_wake_request


# --- engineSleep where the operator sends the sleep (vLLM, SGLang) -------------------------


def vllm_sleeping(*replicas: Replica, **kw: Any) -> model.Decision:
    return model.decide(
        observe(
            *replicas,
            wakeStrategy="engineSleep",
            engine={"type": "vllm"},
            sleep_needs_wake=True,
            sleep_by_request=True,
            **kw,
        )
    )


def test_an_idle_vllm_replica_is_put_to_sleep_after_scale_down_delay_not_removed() -> None:
    awake = replica(asleep=False)
    recent = Demand(last_request=NOW - timedelta(seconds=10))
    waiting = vllm_sleeping(awake, demand=recent, previous=ready_previous(1))
    assert waiting.sleep == ()
    assert waiting.lower_demand_since == NOW
    assert waiting.requeue_after == pytest.approx(model.ENGINE_SLEEP_POLL_SECONDS)

    idle = Demand(last_request=NOW - timedelta(seconds=61))
    previous = ready_previous(1, lower_demand_since=NOW - timedelta(seconds=61))
    asleep = vllm_sleeping(awake, demand=idle, previous=previous)
    assert asleep.sleep == (awake,)
    assert asleep.delete == ()
    assert asleep.desired == 1


def test_a_sleeping_vllm_replica_stays_asleep_without_demand_and_is_kept_from_requests() -> None:
    sleeping = replica(asleep=True)
    decision = vllm_sleeping(sleeping, previous=ready_previous(1))
    assert decision.sleep == ()
    assert decision.wake == ()
    assert decision.backends[0].sleeping is True


@pytest.mark.parametrize(
    "demand", [Demand(wake_requested_at=NOW), Demand(queued=1), Demand(in_flight=2)]
)
def test_demand_wakes_a_sleeping_vllm_replica(demand: Demand) -> None:
    sleeping = replica(asleep=True)
    decision = vllm_sleeping(sleeping, demand=demand, previous=ready_previous(1))
    assert decision.wake == (sleeping,)
    assert decision.sleep == ()
