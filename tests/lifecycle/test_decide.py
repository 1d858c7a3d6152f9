"""The Sandbox life cycle, decided purely: every transition and its guard."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kocoon import lifecycle
from kocoon.api.conditions import ConditionType, Reason, SandboxPhase
from kocoon.api.sandbox import Checkpoint, SandboxSpec
from kocoon.lifecycle import Action, Activity, PodView

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CREATED = NOW - timedelta(hours=1)


def spec(**fields: Any) -> SandboxSpec:
    return SandboxSpec.model_validate({"template": {"image": "busybox"}, **fields})


def running_pod(**fields: Any) -> PodView:
    base: dict[str, Any] = {
        "uid": "pod-uid-1",
        "phase": "Running",
        "ready": True,
        "node": "n1",
        "ip": "127.1.1.1",
    }
    base.update(fields)
    return PodView(**base)


def observed(
    phase: SandboxPhase | None = SandboxPhase.RUNNING,
    pod: PodView | None = None,
    activity: Activity | None = None,
    checkpoint: Checkpoint | None = None,
    running_since: datetime | None = CREATED,
    memory: bool = True,
    restarts: int = 0,
    release_requested: str | None = None,
    **spec_fields: Any,
) -> lifecycle.Observed:
    return lifecycle.Observed(
        name="s1",
        spec=spec(**spec_fields),
        generation=1,
        created=CREATED,
        phase=phase,
        checkpoint=checkpoint,
        pod=pod,
        activity=activity or Activity(),
        now=NOW,
        memory_checkpoint_supported=memory,
        running_since=running_since,
        restarts=restarts,
        release_requested=release_requested,
    )


def conditions(decision: lifecycle.Decision) -> dict[ConditionType, tuple[bool, Reason]]:
    return {c.type: (c.status, c.reason) for c in decision.conditions}


def test_a_new_sandbox_creates_its_pod() -> None:
    decision = lifecycle.decide(observed(phase=None))
    assert decision.phase is SandboxPhase.PENDING
    assert decision.actions == (Action.CREATE_POD,)


def test_a_scheduled_pod_that_is_not_ready_is_starting() -> None:
    decision = lifecycle.decide(
        observed(SandboxPhase.PENDING, running_pod(ready=False, phase="Pending"))
    )
    assert decision.phase is SandboxPhase.STARTING
    assert conditions(decision)[ConditionType.READY] == (False, Reason.POD_NOT_READY)


def test_unschedulable_pod_says_why() -> None:
    pod = running_pod(
        ready=False,
        phase="Pending",
        node=None,
        unschedulable="0/6 nodes are available: 6 Insufficient nvidia.com/gpu.",
    )
    decision = lifecycle.decide(observed(SandboxPhase.STARTING, pod))
    assert decision.phase is SandboxPhase.PENDING
    assert decision.reason is Reason.UNSCHEDULABLE
    status, reason = conditions(decision)[ConditionType.POD_SCHEDULED]
    assert (status, reason) == (False, Reason.UNSCHEDULABLE)
    assert "Insufficient nvidia.com/gpu" in decision.message


def test_ready_pod_is_running_and_asks_to_be_checked_at_the_idle_deadline() -> None:
    activity = Activity(last_request=NOW - timedelta(minutes=3))
    decision = lifecycle.decide(
        observed(SandboxPhase.STARTING, running_pod(), activity, idle_timeout="10m")
    )
    assert decision.phase is SandboxPhase.RUNNING
    assert decision.reason is Reason.POD_READY
    assert decision.requeue_after == pytest.approx(7 * 60)


def test_idle_past_the_timeout_hibernates() -> None:
    activity = Activity(last_request=NOW - timedelta(minutes=11))
    decision = lifecycle.decide(
        observed(SandboxPhase.RUNNING, running_pod(), activity, idle_timeout="10m")
    )
    assert decision.phase is SandboxPhase.HIBERNATING
    assert decision.reason is Reason.IDLE_TIMEOUT


def test_a_request_in_flight_is_never_idle() -> None:
    activity = Activity(last_request=NOW - timedelta(hours=2), in_flight=1)
    decision = lifecycle.decide(
        observed(SandboxPhase.RUNNING, running_pod(), activity, idle_timeout="10m")
    )
    assert decision.phase is SandboxPhase.RUNNING


def test_idle_is_measured_from_the_last_wake_not_the_creation() -> None:
    just_woke = NOW - timedelta(minutes=2)
    decision = lifecycle.decide(
        observed(SandboxPhase.RUNNING, running_pod(), running_since=just_woke, idle_timeout="10m")
    )
    assert decision.phase is SandboxPhase.RUNNING


@pytest.mark.parametrize("mode", ["Running"])
def test_operating_mode_running_never_hibernates(mode: str) -> None:
    decision = lifecycle.decide(
        observed(SandboxPhase.RUNNING, running_pod(), idle_timeout="1m", operatingMode=mode)
    )
    assert decision.phase is SandboxPhase.RUNNING


def test_hibernation_none_never_hibernates_on_idle() -> None:
    decision = lifecycle.decide(
        observed(SandboxPhase.RUNNING, running_pod(), idle_timeout="1m", hibernation="none")
    )
    assert decision.phase is SandboxPhase.RUNNING


def test_operating_mode_hibernated_hibernates_at_once() -> None:
    decision = lifecycle.decide(
        observed(SandboxPhase.RUNNING, running_pod(), operatingMode="Hibernated")
    )
    assert decision.phase is SandboxPhase.HIBERNATING
    assert decision.reason is Reason.REQUESTED_BY_USER


def test_hibernating_with_memory_checkpoints_first() -> None:
    decision = lifecycle.decide(
        observed(SandboxPhase.HIBERNATING, running_pod(), hibernation="memory")
    )
    assert decision.actions == (Action.CHECKPOINT,)


def test_hibernating_after_the_checkpoint_deletes_the_pod() -> None:
    stored = Checkpoint(id=lifecycle.checkpoint_id("s1", "pod-uid-1"), node="n1")
    decision = lifecycle.decide(
        observed(SandboxPhase.HIBERNATING, running_pod(), checkpoint=stored, hibernation="memory")
    )
    assert decision.actions == (Action.DELETE_POD,)


def test_a_checkpoint_of_an_earlier_pod_does_not_count() -> None:
    old = Checkpoint(id=lifecycle.checkpoint_id("s1", "older-pod"), node="n1")
    decision = lifecycle.decide(
        observed(SandboxPhase.HIBERNATING, running_pod(), checkpoint=old, hibernation="memory")
    )
    assert decision.actions == (Action.CHECKPOINT,)


def test_a_failed_checkpoint_falls_back_to_deleting_the_pod() -> None:
    decision = lifecycle.decide(
        observed(
            SandboxPhase.HIBERNATING, running_pod(checkpoint_failed=True), hibernation="memory"
        )
    )
    assert decision.actions == (Action.DELETE_POD,)


def test_filesystem_hibernation_only_deletes_the_pod() -> None:
    decision = lifecycle.decide(
        observed(
            SandboxPhase.HIBERNATING,
            running_pod(),
            hibernation="filesystem",
            workspace={"size": "1Gi"},
        )
    )
    assert decision.actions == (Action.DELETE_POD,)


def test_default_mode_is_filesystem_where_memory_cannot_be_checkpointed() -> None:
    decision = lifecycle.decide(observed(SandboxPhase.HIBERNATING, running_pod(), memory=False))
    assert decision.actions == (Action.DELETE_POD,)


def test_hibernating_waits_for_the_pod_to_go() -> None:
    decision = lifecycle.decide(observed(SandboxPhase.HIBERNATING, running_pod(deleting=True)))
    assert decision.phase is SandboxPhase.HIBERNATING
    assert decision.actions == ()


def test_hibernating_without_a_pod_is_hibernated() -> None:
    decision = lifecycle.decide(observed(SandboxPhase.HIBERNATING, None))
    assert decision.phase is SandboxPhase.HIBERNATED
    assert conditions(decision)[ConditionType.HIBERNATED][0] is True


def test_hibernated_stays_hibernated_without_a_request() -> None:
    decision = lifecycle.decide(observed(SandboxPhase.HIBERNATED, None, idle_timeout="1m"))
    assert decision.phase is SandboxPhase.HIBERNATED
    assert decision.actions == ()


def test_a_wake_request_wakes() -> None:
    decision = lifecycle.decide(
        observed(SandboxPhase.HIBERNATED, None, Activity(wake_requested_at=NOW))
    )
    assert decision.phase is SandboxPhase.WAKING
    assert decision.reason is Reason.SANDBOX_WAKING


def test_a_wake_request_is_ignored_while_mode_is_hibernated() -> None:
    decision = lifecycle.decide(
        observed(
            SandboxPhase.HIBERNATED,
            None,
            Activity(wake_requested_at=NOW),
            operatingMode="Hibernated",
        )
    )
    assert decision.phase is SandboxPhase.HIBERNATED
    assert decision.actions == (Action.CLEAR_WAKE_REQUEST,)


def test_mode_running_wakes_a_hibernated_sandbox() -> None:
    decision = lifecycle.decide(observed(SandboxPhase.HIBERNATED, None, operatingMode="Running"))
    assert decision.phase is SandboxPhase.WAKING


def test_waking_creates_the_pod_then_restores_then_runs() -> None:
    stored = Checkpoint(id="s1-abc", node="n1")
    first = lifecycle.decide(observed(SandboxPhase.WAKING, None, checkpoint=stored))
    assert first.actions == (Action.CREATE_POD,)
    pod = running_pod(uid="pod-uid-2", restore_from="s1-abc")
    second = lifecycle.decide(observed(SandboxPhase.WAKING, pod, checkpoint=stored))
    assert second.actions == (Action.RESTORE,)
    third = lifecycle.decide(observed(SandboxPhase.WAKING, pod, Activity(wake_requested_at=NOW)))
    assert third.phase is SandboxPhase.RUNNING
    assert third.actions == (Action.CLEAR_WAKE_REQUEST,)


def test_a_stray_pod_of_a_hibernated_sandbox_is_removed() -> None:
    decision = lifecycle.decide(observed(SandboxPhase.HIBERNATED, running_pod()))
    assert decision.actions == (Action.DELETE_POD,)


@pytest.mark.parametrize(("policy", "deletes"), [("Retain", False), ("Delete", True)])
def test_shutdown_time_expires_the_sandbox(policy: str, deletes: bool) -> None:
    stored = Checkpoint(id="s1-abc", node="n1")
    decision = lifecycle.decide(
        observed(
            SandboxPhase.RUNNING,
            running_pod(),
            checkpoint=stored,
            shutdownTime=(NOW - timedelta(seconds=1)).isoformat(),
            shutdownPolicy=policy,
        )
    )
    assert decision.phase is SandboxPhase.EXPIRED
    assert Action.DELETE_POD in decision.actions
    assert Action.RELEASE_CHECKPOINT in decision.actions
    assert (Action.DELETE_SANDBOX in decision.actions) is deletes
    assert conditions(decision)[ConditionType.EXPIRED] == (True, Reason.SHUTDOWN_TIME_REACHED)


def test_checkpoint_ids_are_stable_per_pod_and_differ_between_pods() -> None:
    assert lifecycle.checkpoint_id("s1", "a-b-c") == lifecycle.checkpoint_id("s1", "a-b-c")
    assert lifecycle.checkpoint_id("s1", "a-b-c") != lifecycle.checkpoint_id("s1", "a-b-d")


def test_a_sandbox_still_starting_is_not_idle_however_old() -> None:
    # The operator may first see a sandbox long after its creation (it was down, or slow):
    # that is not idleness, nobody could use it yet.
    decision = lifecycle.decide(
        observed(SandboxPhase.PENDING, None, running_since=None, idle_timeout="3s")
    )
    assert decision.phase is SandboxPhase.PENDING
    assert decision.actions == (Action.CREATE_POD,)


@pytest.mark.parametrize(
    ("idle_timeout", "seconds_ago", "active"),
    [(None, 20, True), (None, 40, False), ("15s", 10, True), ("15s", 20, False)],
)
def test_activity_window_for_metering_never_outlasts_the_idle_timeout(
    idle_timeout: str | None, seconds_ago: int, active: bool
) -> None:
    fields = {"idle_timeout": idle_timeout} if idle_timeout else {}
    seen = Activity(last_request=NOW - timedelta(seconds=seconds_ago))
    assert (
        lifecycle.is_active(observed(SandboxPhase.RUNNING, running_pod(), seen, **fields)) is active
    )


def test_a_wake_pod_holding_the_place_is_restored_into_then_runs() -> None:
    stored = Checkpoint(id="s1-abc", node="n1", driver="containerd")
    held = running_pod(uid="pod-uid-2", restore_from="s1-abc", held=True)
    assert lifecycle.decide(observed(SandboxPhase.WAKING, held, checkpoint=stored)).actions == (
        Action.RESTORE,
    )
    restored = running_pod(uid="pod-uid-2", restore_from="s1-abc", held=True, restored="s1-abc")
    assert lifecycle.decide(observed(SandboxPhase.WAKING, restored)).phase is SandboxPhase.RUNNING


def test_a_placeholder_whose_restore_will_not_happen_is_replaced() -> None:
    # The restore failed and the checkpoint was released: the pod runs nothing.
    held = running_pod(uid="pod-uid-2", restore_from="s1-abc", held=True)
    waking = lifecycle.decide(observed(SandboxPhase.WAKING, held))
    assert (waking.phase, waking.actions) == (SandboxPhase.WAKING, (Action.DELETE_POD,))
    running = lifecycle.decide(observed(SandboxPhase.RUNNING, held))
    assert running.actions == (Action.DELETE_POD,)
    assert running.phase is not SandboxPhase.RUNNING


def test_a_placeholder_is_never_checkpointed() -> None:
    held = running_pod(uid="pod-uid-2", restore_from="s1-abc", held=True)
    decision = lifecycle.decide(observed(SandboxPhase.HIBERNATING, held, hibernation="memory"))
    assert decision.actions == (Action.DELETE_POD,)
    restored = running_pod(uid="pod-uid-2", restore_from="s1-abc", held=True, restored="s1-abc")
    again = lifecycle.decide(observed(SandboxPhase.HIBERNATING, restored, hibernation="memory"))
    assert again.actions == (Action.CHECKPOINT,)


def test_an_in_flight_count_the_router_stopped_renewing_does_not_keep_it_awake() -> None:
    idle = NOW - timedelta(minutes=30)
    fresh = Activity(
        last_request=idle, in_flight=1, in_flight_valid_until=NOW + timedelta(seconds=5)
    )
    stale = Activity(
        last_request=idle, in_flight=1, in_flight_valid_until=NOW - timedelta(seconds=1)
    )
    running = running_pod()
    kept = lifecycle.decide(observed(SandboxPhase.RUNNING, running, fresh, idle_timeout="10m"))
    assert kept.phase is SandboxPhase.RUNNING
    slept = lifecycle.decide(observed(SandboxPhase.RUNNING, running, stale, idle_timeout="10m"))
    assert slept.phase is SandboxPhase.HIBERNATING


def test_an_in_flight_count_is_valid_for_ten_lease_durations_and_at_least_a_minute() -> None:
    from kocoon.controllers import observe

    def lease(seconds: int) -> dict[str, Any]:
        return {
            "metadata": {"annotations": {"kocoon.io/in-flight": "2"}},
            "spec": {"renewTime": "2026-11-23T12:00:00.000000Z", "leaseDurationSeconds": seconds},
        }

    assert observe.activity(lease(3)).in_flight_valid_until == NOW + timedelta(seconds=60)
    assert observe.activity(lease(15)).in_flight_valid_until == NOW + timedelta(seconds=150)


# --- pod failures, release requests, the effective hibernation mode ---------------------------


def ended_pod(reason: str = "Evicted") -> PodView:
    return running_pod(phase="Failed", ready=False, ended=True, container_reason=reason)


def test_an_ended_pod_is_replaced_and_counted_with_a_warning() -> None:
    decision = lifecycle.decide(observed(SandboxPhase.RUNNING, ended_pod(), restarts=2))
    assert decision.phase is SandboxPhase.STARTING
    assert decision.actions == (Action.DELETE_POD,)
    assert decision.count_restart
    assert decision.warning
    assert conditions(decision)[ConditionType.READY] == (False, Reason.POD_FAILED)
    assert "Evicted" in decision.message


def test_the_fifth_failure_fails_the_sandbox_with_the_containers_reason() -> None:
    decision = lifecycle.decide(
        observed(SandboxPhase.RUNNING, ended_pod("OOMKilled, exit code 137"), restarts=4)
    )
    assert decision.phase is SandboxPhase.FAILED
    assert decision.actions == (Action.DELETE_POD,)
    assert "OOMKilled, exit code 137" in decision.message
    # Failed stays Failed (and podless) while the count stands.
    again = lifecycle.decide(observed(SandboxPhase.FAILED, None, restarts=5))
    assert again.phase is SandboxPhase.FAILED
    assert again.actions == ()


def test_a_crash_looping_container_fails_the_sandbox() -> None:
    pod = running_pod(ready=False, container_reason="CrashLoopBackOff", container_restarts=5)
    decision = lifecycle.decide(observed(SandboxPhase.STARTING, pod))
    assert decision.phase is SandboxPhase.FAILED
    assert "CrashLoopBackOff" in decision.message
    fewer = running_pod(ready=False, container_reason="CrashLoopBackOff", container_restarts=2)
    assert lifecycle.decide(observed(SandboxPhase.STARTING, fewer)).phase is SandboxPhase.STARTING


def test_a_waking_sandbox_replaces_an_ended_pod_too() -> None:
    decision = lifecycle.decide(observed(SandboxPhase.WAKING, ended_pod()))
    assert decision.phase is SandboxPhase.WAKING
    assert decision.actions == (Action.DELETE_POD,)
    assert decision.count_restart


def test_a_release_request_releases_the_named_checkpoint_and_stays_hibernated() -> None:
    checkpoint = Checkpoint(id="s1-abc", node="n1")
    decision = lifecycle.decide(
        observed(SandboxPhase.HIBERNATED, checkpoint=checkpoint, release_requested="s1-abc")
    )
    assert decision.phase is SandboxPhase.HIBERNATED
    assert decision.actions == (Action.RELEASE_CHECKPOINT,)
    assert conditions(decision)[ConditionType.CHECKPOINT_AVAILABLE] == (
        False,
        Reason.HIBERNATED_STATE_RELEASED,
    )
    other = lifecycle.decide(
        observed(SandboxPhase.HIBERNATED, checkpoint=checkpoint, release_requested="older")
    )
    assert other.actions == ()
    nothing = lifecycle.decide(observed(SandboxPhase.HIBERNATED, release_requested=""))
    assert nothing.actions == ()


def test_the_effective_hibernation_mode_overrides_the_memory_guess() -> None:
    # `none` (e.g. Kata without a workspace): never idles to sleep.
    base = observed(SandboxPhase.RUNNING, running_pod(), idleTimeout="1m", memory=True)
    assert lifecycle.idle_deadline(base) is not None
    assert lifecycle.idle_deadline(replace(base, hibernation="none")) is None


def test_a_coming_shutdown_time_is_a_deadline_to_wake_up_for() -> None:
    soon = (NOW + timedelta(seconds=7)).isoformat()
    decision = lifecycle.decide(observed(SandboxPhase.HIBERNATED, shutdownTime=soon))
    assert decision.requeue_after == pytest.approx(7)
    later = (NOW + timedelta(hours=2)).isoformat()
    idle = lifecycle.decide(
        observed(
            SandboxPhase.RUNNING,
            running_pod(),
            running_since=NOW,
            idleTimeout="1m",
            shutdownTime=later,
        )
    )
    assert idle.phase is SandboxPhase.RUNNING
    assert idle.requeue_after is not None
    assert idle.requeue_after < 3600  # the idle deadline comes first


def test_a_running_pod_that_restarted_now_and_then_is_not_a_crash_loop() -> None:
    pod = running_pod(container_restarts=9, container_reason="OOMKilled, exit code 137")
    assert lifecycle.decide(observed(SandboxPhase.RUNNING, pod)).phase is SandboxPhase.RUNNING
