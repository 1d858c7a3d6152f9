"""The AgentSession life cycle, decided purely: phases, expiry, retention, wake, tokens."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kocoon import session_lifecycle as sl
from kocoon.api.conditions import ConditionType, Reason, SandboxPhase, SessionPhase
from kocoon.api.sandbox import Usage
from kocoon.api.session import AgentSessionSpec
from kocoon.lifecycle import Activity
from kocoon.session_lifecycle import Action, SandboxIntent
from kocoon.status import ConditionUpdate

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CREATED = NOW - timedelta(hours=1)
TEMPLATE = {"template": {"image": "busybox"}, "workspace": {"size": "1Gi"}}


def spec(**fields: Any) -> AgentSessionSpec:
    return AgentSessionSpec.model_validate(
        {"owner": {"user": "alice"}, "sandboxTemplate": TEMPLATE, **fields}
    )


def sandbox(phase: SandboxPhase | None = SandboxPhase.RUNNING, **fields: Any) -> sl.SandboxView:
    ready = sl.ConditionView(
        "True" if phase is SandboxPhase.RUNNING else "False",
        "PodReady" if phase is SandboxPhase.RUNNING else "SandboxHibernated",
    )
    base: dict[str, Any] = {"uid": "sbx-1", "owned": True, "phase": phase, "ready": ready}
    base.update(fields)
    return sl.SandboxView(**base)


def observed(**fields: Any) -> sl.Observed:
    spec_fields = fields.pop("spec", {})
    base: dict[str, Any] = {
        "name": "s1",
        "spec": spec(**spec_fields),
        "generation": 1,
        "created": CREATED,
        "now": NOW,
        "token": sl.TokenView(),
    }
    base.update(fields)
    return sl.Observed(**base)


def conditions(decision: sl.Decision) -> dict[str, ConditionUpdate]:
    return {c.type: c for c in decision.conditions}


# --- creation and mirroring ------------------------------------------------------------------


def test_a_new_session_creates_its_token_and_sandbox() -> None:
    decision = sl.decide(observed(token=None))
    assert decision.phase is SessionPhase.PENDING
    assert decision.sandbox is SandboxIntent.RUN
    assert decision.actions == (Action.CREATE_TOKEN,)
    assert not decision.sandbox_ref
    assert conditions(decision)[ConditionType.READY].status is False


@pytest.mark.parametrize(
    "phase",
    [
        SandboxPhase.STARTING,
        SandboxPhase.RUNNING,
        SandboxPhase.HIBERNATING,
        SandboxPhase.HIBERNATED,
        SandboxPhase.WAKING,
        SandboxPhase.FAILED,
    ],
)
def test_the_phase_mirrors_the_sandbox(phase: SandboxPhase) -> None:
    decision = sl.decide(observed(sandbox=sandbox(phase)))
    assert decision.phase.value == phase.value
    assert decision.sandbox is SandboxIntent.RUN
    assert decision.sandbox_ref


def test_ready_and_hibernated_mirror_the_sandbox() -> None:
    hibernated = sl.ConditionView("True", "IdleTimeout", "mode filesystem")
    decision = sl.decide(observed(sandbox=sandbox(SandboxPhase.HIBERNATED, hibernated=hibernated)))
    found = conditions(decision)
    assert found[ConditionType.READY].status is False
    assert found[ConditionType.HIBERNATED].status is True
    assert found[ConditionType.HIBERNATED].reason == "IdleTimeout"
    assert [e.reason for e in decision.events] == ["SandboxHibernated"]


def test_start_time_is_set_once_on_first_running() -> None:
    assert sl.decide(observed(sandbox=sandbox())).start_time == NOW
    earlier = NOW - timedelta(minutes=5)
    assert sl.decide(observed(sandbox=sandbox(), start_time=earlier)).start_time is None
    assert sl.decide(observed(sandbox=sandbox(SandboxPhase.STARTING))).start_time is None


def test_a_sandbox_of_the_same_name_not_ours_is_never_taken_over() -> None:
    decision = sl.decide(observed(sandbox=sandbox(owned=False)))
    assert decision.phase is SessionPhase.FAILED
    assert decision.sandbox is SandboxIntent.LEAVE
    assert conditions(decision)[ConditionType.READY].reason == "SandboxNameTaken"
    assert decision.events
    assert decision.events[0].warning


def test_a_deleted_sandbox_is_replaced_once_it_is_gone() -> None:
    going = sl.decide(observed(sandbox=sandbox(deleting=True), phase=SessionPhase.RUNNING))
    assert going.sandbox is SandboxIntent.LEAVE
    assert going.phase is SessionPhase.PENDING
    gone = sl.decide(observed(sandbox=None, phase=SessionPhase.PENDING))
    assert gone.sandbox is SandboxIntent.RUN


def test_an_invalid_combination_fails_with_the_message() -> None:
    decision = sl.decide(observed(template_error="spec.hibernation: needs a workspace"))
    assert decision.phase is SessionPhase.FAILED
    assert decision.sandbox is SandboxIntent.LEAVE
    assert "spec.hibernation" in conditions(decision)[ConditionType.READY].message


# --- expiry and retention --------------------------------------------------------------------


def test_max_lifetime_counts_from_start_time() -> None:
    started = NOW - timedelta(minutes=30)
    alive = sl.decide(observed(spec={"maxLifetime": "31m"}, start_time=started, sandbox=sandbox()))
    assert alive.phase is SessionPhase.RUNNING
    assert alive.requeue_after == pytest.approx(60)
    expired = sl.decide(
        observed(spec={"maxLifetime": "30m"}, start_time=started, sandbox=sandbox())
    )
    assert expired.phase is SessionPhase.EXPIRED
    assert expired.sandbox is SandboxIntent.DELETE
    found = conditions(expired)
    assert found[ConditionType.EXPIRED].reason == Reason.MAX_LIFETIME_REACHED
    assert found[ConditionType.READY].status is False


def test_a_session_that_never_ran_expires_from_creation() -> None:
    decision = sl.decide(
        observed(spec={"maxLifetime": "59m"}, sandbox=sandbox(SandboxPhase.PENDING))
    )
    assert decision.phase is SessionPhase.EXPIRED


def test_the_templates_shutdown_time_also_ends_the_session() -> None:
    template = {**TEMPLATE, "shutdownTime": "2026-11-23T11:00:00Z"}
    decision = sl.decide(observed(spec={"sandboxTemplate": template}, sandbox=None))
    assert decision.phase is SessionPhase.EXPIRED
    assert decision.sandbox is SandboxIntent.LEAVE  # nothing to delete, and nothing recreated
    assert conditions(decision)[ConditionType.EXPIRED].reason == Reason.SHUTDOWN_TIME_REACHED


def test_expired_with_retention_keeps_the_sandbox_asleep_then_deletes_it() -> None:
    started = NOW - timedelta(minutes=20)
    fields = {"maxLifetime": "10m", "retention": "15m"}
    kept = sl.decide(observed(spec=fields, start_time=started, sandbox=sandbox()))
    assert kept.phase is SessionPhase.EXPIRED
    assert kept.sandbox is SandboxIntent.HIBERNATE
    assert kept.sandbox_ref
    assert kept.requeue_after == pytest.approx(5 * 60)
    later = replace(
        observed(spec=fields, start_time=started, sandbox=sandbox(SandboxPhase.HIBERNATED)),
        now=NOW + timedelta(minutes=5),
    )
    assert sl.decide(later).sandbox is SandboxIntent.DELETE


def test_expired_session_clears_wake_requests_and_posts_one_event() -> None:
    fields = {"maxLifetime": "10m"}
    wake = Activity(wake_requested_at=NOW)
    first = sl.decide(
        observed(spec=fields, activity=wake, sandbox=None, phase=SessionPhase.RUNNING)
    )
    assert Action.CLEAR_WAKE_REQUEST in first.actions
    assert [e.reason for e in first.events] == [Reason.MAX_LIFETIME_REACHED]
    again = sl.decide(observed(spec=fields, sandbox=None, phase=SessionPhase.EXPIRED))
    assert again.events == ()
    assert not again.sandbox_ref


def test_retention_asks_the_sandbox_to_release_its_checkpoint() -> None:
    asleep = sandbox(
        SandboxPhase.HIBERNATED,
        has_checkpoint=True,
        checkpoint_id="s1-0123",
        phase_since=NOW - timedelta(hours=2),
    )
    decision = sl.decide(
        observed(spec={"retention": "1h"}, sandbox=asleep, phase=SessionPhase.HIBERNATED)
    )
    assert decision.release_checkpoint == "s1-0123"
    assert decision.sandbox is SandboxIntent.RUN  # the request goes on the applied Sandbox
    assert decision.phase is SessionPhase.HIBERNATED
    assert [e.reason for e in decision.events] == [Reason.HIBERNATED_STATE_RELEASED]
    # Asked already: the request stays, the Event is not posted again.
    asked = replace(asleep, release_requested="s1-0123")
    again = sl.decide(
        observed(spec={"retention": "1h"}, sandbox=asked, phase=SessionPhase.HIBERNATED)
    )
    assert again.release_checkpoint == "s1-0123"
    assert again.events == ()
    fresh = replace(asleep, phase_since=NOW - timedelta(minutes=10))
    waiting = sl.decide(observed(spec={"retention": "1h"}, sandbox=fresh))
    assert waiting.release_checkpoint is None
    assert waiting.requeue_after == pytest.approx(50 * 60)
    unlimited = sl.decide(observed(sandbox=asleep))
    assert unlimited.release_checkpoint is None


# --- wake and activity -----------------------------------------------------------------------


def test_a_wake_request_for_the_session_reaches_its_sandbox() -> None:
    wake = Activity(wake_requested_at=NOW)
    decision = sl.decide(observed(activity=wake, sandbox=sandbox(SandboxPhase.HIBERNATED)))
    assert Action.FORWARD_WAKE in decision.actions
    assert Action.CLEAR_WAKE_REQUEST not in decision.actions
    already = sl.decide(
        observed(
            activity=wake,
            sandbox_activity=Activity(wake_requested_at=NOW),
            sandbox=sandbox(SandboxPhase.WAKING),
        )
    )
    assert Action.FORWARD_WAKE not in already.actions


def test_the_wake_request_is_cleared_once_acted_on() -> None:
    wake = Activity(wake_requested_at=NOW)
    running = sl.decide(observed(activity=wake, sandbox=sandbox(SandboxPhase.RUNNING)))
    assert Action.CLEAR_WAKE_REQUEST in running.actions
    assert Action.FORWARD_WAKE not in running.actions
    user_wants_asleep = sl.decide(
        observed(
            spec={"operatingMode": "Hibernated"},
            activity=wake,
            sandbox=sandbox(SandboxPhase.HIBERNATED),
        )
    )
    assert Action.CLEAR_WAKE_REQUEST in user_wants_asleep.actions
    assert Action.FORWARD_WAKE not in user_wants_asleep.actions


def test_activity_is_mirrored_when_it_is_news_to_the_sandbox() -> None:
    earlier, later = NOW - timedelta(seconds=30), NOW
    assert sl.activity_to_mirror(Activity(last_request=later), Activity(), NOW)
    assert sl.activity_to_mirror(Activity(last_request=later), Activity(last_request=earlier), NOW)
    assert not sl.activity_to_mirror(
        Activity(last_request=earlier), Activity(last_request=later), NOW
    )
    assert not sl.activity_to_mirror(Activity(), Activity(last_request=later), NOW)
    same = Activity(last_request=later, in_flight=0)
    assert not sl.activity_to_mirror(same, Activity(last_request=later, in_flight=0), NOW)
    assert sl.activity_to_mirror(same, Activity(last_request=later, in_flight=2), NOW)
    decision = sl.decide(observed(activity=Activity(last_request=later), sandbox=sandbox()))
    assert Action.MIRROR_ACTIVITY in decision.actions


def test_a_count_the_router_stopped_renewing_is_not_carried_as_in_flight() -> None:
    """A router that died mid-request left in-flight=2 on the session's Lease: once stale,
    the session's Sandbox sees 0 and may idle; while fresh, it sees 2."""
    last = NOW - timedelta(minutes=10)
    stale = Activity(
        last_request=last, in_flight=2, in_flight_valid_until=NOW - timedelta(seconds=1)
    )
    # The Sandbox's Lease carries the count mirrored earlier: it is brought down to 0.
    carried = Activity(last_request=last, in_flight=2)
    decision = sl.decide(observed(activity=stale, sandbox_activity=carried, sandbox=sandbox()))
    assert Action.MIRROR_ACTIVITY in decision.actions
    assert decision.mirror_in_flight == 0
    # A stale count is no news to a Sandbox that already has 0.
    zero = Activity(last_request=last, in_flight=0)
    quiet = sl.decide(observed(activity=stale, sandbox_activity=zero, sandbox=sandbox()))
    assert Action.MIRROR_ACTIVITY not in quiet.actions

    # Fresh: carried as is, and the session is reconciled again when it would go stale.
    until = NOW + timedelta(seconds=40)
    fresh = Activity(last_request=last, in_flight=2, in_flight_valid_until=until)
    live = sl.decide(observed(activity=fresh, sandbox_activity=zero, sandbox=sandbox()))
    assert Action.MIRROR_ACTIVITY in live.actions
    assert live.mirror_in_flight == 2
    assert live.requeue_after == pytest.approx(40, abs=0.01)


# --- models ----------------------------------------------------------------------------------


def test_a_model_that_does_not_exist_is_named_with_its_field() -> None:
    models = {"models": [{"name": "llama"}, {"name": "qwen"}]}
    decision = sl.decide(
        observed(spec=models, sandbox=sandbox(), models_present=frozenset({"llama"}))
    )
    found = conditions(decision)[ConditionType.MODELS_AVAILABLE]
    assert found.status is False
    assert found.reason == Reason.MODEL_NOT_FOUND
    assert "spec.models[1]" in found.message
    assert "qwen" in found.message
    assert "llama" not in found.message
    assert decision.phase is SessionPhase.RUNNING  # the session itself runs on

    present = sl.decide(
        observed(spec=models, sandbox=sandbox(), models_present=frozenset({"llama", "qwen"}))
    )
    found = conditions(present)[ConditionType.MODELS_AVAILABLE]
    assert (found.status, found.reason) == (True, Reason.MODELS_FOUND)
    assert present.drop_conditions == ()

    none = sl.decide(observed(sandbox=sandbox()))
    assert ConditionType.MODELS_AVAILABLE not in conditions(none)
    assert none.drop_conditions == (ConditionType.MODELS_AVAILABLE,)


# --- tokens ----------------------------------------------------------------------------------


def test_a_new_rotation_request_rotates_once() -> None:
    decision = sl.decide(observed(rotate_request="1", sandbox=sandbox()))
    assert Action.ROTATE_TOKEN in decision.actions
    found = conditions(decision)[ConditionType.PREVIOUS_TOKEN_ACCEPTED]
    assert found.status is True
    assert next(e.reason for e in decision.events) == Reason.TOKEN_ROTATED
    done = sl.TokenView(has_previous=True, rotation="1", rotated_at=NOW)
    again = sl.decide(observed(rotate_request="1", token=done, sandbox=sandbox()))
    assert Action.ROTATE_TOKEN not in again.actions
    assert conditions(again)[ConditionType.PREVIOUS_TOKEN_ACCEPTED].status is True
    assert again.requeue_after == pytest.approx(sl.TOKEN_GRACE.total_seconds())


def test_the_previous_token_is_dropped_after_the_grace_period() -> None:
    rotated = sl.TokenView(has_previous=True, rotation="1", rotated_at=NOW - sl.TOKEN_GRACE)
    decision = sl.decide(observed(rotate_request="1", token=rotated, sandbox=sandbox()))
    assert Action.DROP_PREVIOUS_TOKEN in decision.actions
    assert conditions(decision)[ConditionType.PREVIOUS_TOKEN_ACCEPTED].status is False
    dropped = sl.TokenView(has_previous=False, rotation="1")
    quiet = sl.decide(observed(rotate_request="1", token=dropped, sandbox=sandbox()))
    assert Action.DROP_PREVIOUS_TOKEN not in quiet.actions


def test_an_existing_token_is_never_recreated_and_no_rotation_means_no_condition() -> None:
    decision = sl.decide(observed(sandbox=sandbox()))
    assert Action.CREATE_TOKEN not in decision.actions
    assert Action.ROTATE_TOKEN not in decision.actions
    assert ConditionType.PREVIOUS_TOKEN_ACCEPTED not in conditions(decision)


# --- usage -----------------------------------------------------------------------------------


def usage(active: float, wakes: int = 0) -> Usage:
    return Usage(active_seconds=active, idle_seconds=1, wake_count=wakes)


def test_usage_is_the_sum_over_the_sandboxes_the_session_owned() -> None:
    ledger, total = sl.account_usage(sl.UsageLedger(), None, "a", usage(10, 1))
    assert ledger.sandbox_uid == "a"
    assert total.active_seconds == 10
    ledger, total = sl.account_usage(ledger, total, "a", usage(25, 2))
    assert total.active_seconds == 25
    assert total.wake_count == 2
    # the sandbox is deleted: its last usage is kept
    ledger, total = sl.account_usage(ledger, total, None, None)
    assert ledger.sandbox_uid is None
    assert total.active_seconds == 25
    assert total.idle_seconds == 1
    # a new sandbox adds to it
    ledger, total = sl.account_usage(ledger, total, "b", usage(4))
    assert total.active_seconds == 29
    assert total.idle_seconds == 2
    assert total.wake_count == 2


def test_a_replaced_sandbox_is_folded_in_even_without_seeing_it_gone() -> None:
    ledger = sl.UsageLedger(retired=usage(5), sandbox_uid="a")
    last_total = sl.add_usage(usage(5), usage(7))
    ledger, total = sl.account_usage(ledger, last_total, "b", usage(3))
    assert ledger.retired.active_seconds == 12
    assert total.active_seconds == 15


def test_the_usage_total_follows_phase_changes_not_every_tick() -> None:
    def at(seconds: float, active: float) -> Usage:
        return Usage(active_seconds=active, accounted_until=NOW + timedelta(seconds=seconds))

    last = at(0, 10)
    running = sandbox(phase_since=NOW - timedelta(minutes=5))
    # The Sandbox counted 20 s more in the same phase: the session keeps its total.
    tick = sl.usage_to_write(last, at(20, 30), running, phase_changed=False, ledger_changed=False)
    assert tick == last
    # A minute later it follows, and at once on any change of phase or Sandbox.
    minute = sl.usage_to_write(last, at(60, 70), running, phase_changed=False, ledger_changed=False)
    assert minute.active_seconds == 70
    moved = replace(running, phase_since=NOW + timedelta(seconds=10))
    assert sl.usage_to_write(
        last, at(20, 30), moved, phase_changed=False, ledger_changed=False
    ) == (at(20, 30))
    going = replace(running, deleting=True)
    assert sl.usage_to_write(
        last, at(20, 30), going, phase_changed=False, ledger_changed=False
    ) == (at(20, 30))
    assert sl.usage_to_write(
        last, at(20, 30), running, phase_changed=True, ledger_changed=False
    ) == (at(20, 30))
    assert sl.usage_to_write(last, at(20, 30), None, phase_changed=False, ledger_changed=True) == (
        at(20, 30)
    )
    assert sl.usage_to_write(
        None, at(20, 30), running, phase_changed=False, ledger_changed=False
    ) == (at(20, 30))


def test_a_deleted_sandbox_s_final_usage_is_folded_in_exactly() -> None:
    ledger = sl.UsageLedger(retired=usage(5), sandbox_uid="a")
    stale_total = sl.add_usage(usage(5), usage(1))  # written before "a" counted its last minute
    ledger, total = sl.account_usage(ledger, stale_total, None, None, ("a", usage(9)))
    assert ledger == sl.UsageLedger(retired=total, sandbox_uid=None)
    assert total.active_seconds == 14
    # Another Sandbox's departure says nothing about "a": the total last written is kept.
    other = sl.UsageLedger(retired=usage(5), sandbox_uid="a")
    _, kept = sl.account_usage(other, stale_total, None, None, ("b", usage(100)))
    assert kept == stale_total


def test_a_token_secret_made_by_the_sandbox_is_claimed_not_replaced() -> None:
    made_by_sandbox = sl.TokenView(owned=False)
    decision = sl.decide(observed(token=made_by_sandbox, sandbox=sandbox()))
    assert decision.actions[0] is Action.CLAIM_TOKEN
    assert Action.CREATE_TOKEN not in decision.actions
    assert Action.CLAIM_TOKEN not in sl.decide(observed(sandbox=sandbox())).actions


def test_a_failing_child_is_reported_once_and_retried_ever_less_often() -> None:
    failing = sl.ChildrenOutcome(failures=("Sandbox s1: 403: quota exceeded",))
    first = sl.report_children(failing, {}, NOW)
    [condition] = first.conditions
    assert (condition.type, condition.status) == (ConditionType.CHILDREN_READY, False)
    assert "Sandbox s1: 403: quota exceeded" in condition.message
    assert [e.reason for e in first.events] == [Reason.CHILD_APPLY_FAILED]
    assert first.requeue_after == 1
    since = NOW - timedelta(seconds=30)
    later = sl.report_children(
        failing, {ConditionType.CHILDREN_READY: (Reason.CHILD_APPLY_FAILED, since)}, NOW
    )
    assert later.events == ()
    assert later.requeue_after == pytest.approx(30)
    long_ago = NOW - timedelta(hours=3)
    capped = sl.report_children(
        failing, {ConditionType.CHILDREN_READY: (Reason.CHILD_APPLY_FAILED, long_ago)}, NOW
    )
    assert capped.requeue_after == sl.CHILD_RETRY_MAX.total_seconds()
    fine = sl.report_children(sl.ChildrenOutcome(), {}, NOW)
    assert [c.status for c in fine.conditions] == [True]
    assert fine.requeue_after is None
    invalid = sl.report_children(sl.ChildrenOutcome(sandbox_refused="spec.x: bad"), {}, NOW)
    ready = next(c for c in invalid.conditions if c.type == ConditionType.READY)
    assert ready.reason == Reason.INVALID_SANDBOX_TEMPLATE
    assert "spec.x: bad" in ready.message


def test_the_last_activity_is_the_latest_seen_anywhere_in_steps() -> None:
    early, late = NOW - timedelta(minutes=5), NOW - timedelta(minutes=1)
    assert sl.last_activity_time(None, Activity(), None) is None
    assert sl.last_activity_time(early, Activity(last_request=late), None) == late
    assert sl.last_activity_time(late, Activity(last_request=early), sandbox()) == late
    assert sl.last_activity_time(None, Activity(), sandbox(last_activity=early)) == early
    # A renewal 10 s later is not worth a status write; 30 s later it is.
    soon = late + timedelta(seconds=10)
    assert sl.last_activity_time(late, Activity(last_request=soon), None) == late
    later = late + sl.LAST_ACTIVITY_STEP
    assert sl.last_activity_time(late, Activity(last_request=later), None) == later
