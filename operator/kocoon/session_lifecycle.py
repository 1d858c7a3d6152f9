"""The AgentSession life cycle as a pure function: (spec, what is observed, now) → what to do.

A session is the logical, always-present half of "one session, one runtime": it owns one
Sandbox (named like the session) while it has compute or hibernated state, one token Secret and
one activity Lease. Its phase mirrors its Sandbox's, plus Expired:

    Pending → (the Sandbox's phases: Starting, Running, Hibernating, Hibernated, Waking) → Expired

- maxLifetime counts from status.startTime (from creation while the session never ran); the
  template's shutdownTime, when earlier, ends the session too. On expiry the Sandbox is
  hibernated and kept for `retention` (its workspace and checkpoint), then deleted; without
  retention it is deleted at once.
  The session owns expiry: the template's shutdownTime is not copied into the Sandbox, so
  the Sandbox never expires by itself and retention keeps its hibernated state.
- While not expired, a Sandbox hibernated for longer than `retention` loses its memory
  checkpoint (it then wakes cold from its workspace): the session asks for that on the
  Sandbox (an annotation naming the checkpoint); the Sandbox controller releases it.
- The router writes activity and wake requests on the session's Lease; they are carried to
  the Sandbox's Lease, where the Sandbox controller acts on them. An in-flight count the
  router stopped renewing is stale and is carried as 0.
- Every ModelDeployment named in spec.models must exist (condition ModelsAvailable).
- The token is created once and rotated on request; the previous token stays valid for
  TOKEN_GRACE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from kocoon.api.conditions import ConditionType, Reason, SandboxPhase, SessionPhase
from kocoon.api.sandbox import Usage
from kocoon.api.session import AgentSessionSpec
from kocoon.lifecycle import Activity
from kocoon.status import ConditionUpdate

# How long a rotated-out token keeps working, so clients can move to the new one.
TOKEN_GRACE = timedelta(minutes=5)


@dataclass(frozen=True)
class ConditionView:
    status: str
    reason: str
    message: str = ""


@dataclass(frozen=True)
class SandboxView:
    """What the session reads from the Sandbox named like it."""

    uid: str
    owned: bool  # its controller owner reference is this session
    phase: SandboxPhase | None = None
    phase_since: datetime | None = None
    deleting: bool = False
    ready: ConditionView | None = None
    hibernated: ConditionView | None = None
    has_checkpoint: bool = False
    usage: Usage | None = None
    last_activity: datetime | None = None
    checkpoint_id: str | None = None
    # The checkpoint the session asked the Sandbox controller to release (its annotation).
    release_requested: str | None = None


@dataclass(frozen=True)
class TokenView:
    """What the session reads from its token Secret."""

    has_previous: bool = False
    rotation: str | None = None  # the rotation request last carried out
    rotated_at: datetime | None = None
    # Controlled by the session and labelled with it (else made by its Sandbox, e.g. when
    # the Sandbox recreated a deleted Secret first): the session then claims it, token kept.
    owned: bool = True


@dataclass(frozen=True)
class Observed:
    name: str
    spec: AgentSessionSpec
    generation: int
    created: datetime
    now: datetime
    phase: SessionPhase | None = None
    start_time: datetime | None = None
    sandbox: SandboxView | None = None
    token: TokenView | None = None  # None: the Secret does not exist
    rotate_request: str | None = None  # the session's rotate-token annotation
    activity: Activity = field(default_factory=Activity)  # the session's Lease
    sandbox_activity: Activity = field(default_factory=Activity)  # the Sandbox's Lease
    # Set when the template with the session's policies is not a valid Sandbox.
    template_error: str | None = None
    # The names of the ModelDeployments that exist in the session's namespace.
    models_present: frozenset[str] = frozenset()


class SandboxIntent(StrEnum):
    """What should happen to the Sandbox."""

    RUN = "Run"  # apply it with the session's policies (creates it when missing)
    HIBERNATE = "Hibernate"  # apply it asleep: an expired session's retained state
    DELETE = "Delete"
    LEAVE = "Leave"  # touch nothing (not ours, going away, or gone)


class Action(StrEnum):
    CREATE_TOKEN = "CreateToken"
    ROTATE_TOKEN = "RotateToken"
    DROP_PREVIOUS_TOKEN = "DropPreviousToken"
    FORWARD_WAKE = "ForwardWake"
    CLEAR_WAKE_REQUEST = "ClearWakeRequest"
    MIRROR_ACTIVITY = "MirrorActivity"
    CLAIM_TOKEN = "ClaimToken"


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Decision:
    phase: SessionPhase
    sandbox: SandboxIntent
    actions: tuple[Action, ...] = ()
    conditions: tuple[ConditionUpdate, ...] = ()
    events: tuple[Event, ...] = ()
    # Whether status.sandboxRef names the Sandbox.
    sandbox_ref: bool = False
    start_time: datetime | None = None
    requeue_after: float | None = None
    # The in-flight count MIRROR_ACTIVITY writes: the session's, or 0 once it is stale.
    mirror_in_flight: int = 0
    # The checkpoint the Sandbox is asked to release (its annotation), if any.
    release_checkpoint: str | None = None
    # Condition types that no longer apply and leave status.
    drop_conditions: tuple[str, ...] = ()


# --- deadlines -------------------------------------------------------------------------------


def expiry(observed: Observed) -> tuple[datetime, Reason] | None:
    """When the session ends, and why; None when it never does."""
    candidates: list[tuple[datetime, Reason]] = []
    if observed.spec.max_lifetime is not None:
        since = observed.start_time or observed.created
        candidates.append((since + observed.spec.max_lifetime, Reason.MAX_LIFETIME_REACHED))
    shutdown = observed.spec.sandbox_template.shutdown_time
    if shutdown is not None:
        candidates.append((shutdown, Reason.SHUTDOWN_TIME_REACHED))
    return min(candidates, key=lambda c: c[0]) if candidates else None


def checkpoint_release_due(observed: Observed) -> datetime | None:
    """When the hibernated Sandbox's memory checkpoint outlives `retention`; None if never."""
    sandbox = observed.sandbox
    retention = observed.spec.retention
    if (
        retention is None
        or sandbox is None
        or sandbox.phase is not SandboxPhase.HIBERNATED
        or not sandbox.has_checkpoint
        or sandbox.phase_since is None
    ):
        return None
    return sandbox.phase_since + retention


def _seconds_until(now: datetime, moments: list[datetime | None]) -> float | None:
    future = [m for m in moments if m is not None]
    if not future:
        return None
    return max(0.5, (min(future) - now).total_seconds())


# --- the decision ----------------------------------------------------------------------------


def decide(observed: Observed) -> Decision:
    token_actions, token_conditions, token_events, token_due = _token(observed)
    if observed.token is not None and not observed.token.owned:
        token_actions = (Action.CLAIM_TOKEN, *token_actions)
    if observed.template_error is not None:
        decision = _invalid(observed)
    else:
        ends = expiry(observed)
        if ends is not None and observed.now >= ends[0]:
            decision = _expired(observed, *ends)
        else:
            decision = _live(observed, ends[0] if ends else None)
    models_conditions, drop = _models(observed)
    requeue = [
        token_due,
        observed.now + timedelta(seconds=decision.requeue_after)
        if decision.requeue_after is not None
        else None,
        in_flight_stale_at(observed.activity, observed.now),
    ]
    return Decision(
        phase=decision.phase,
        sandbox=decision.sandbox,
        actions=token_actions + decision.actions,
        conditions=decision.conditions + token_conditions + models_conditions,
        events=token_events + decision.events,
        sandbox_ref=decision.sandbox_ref,
        start_time=decision.start_time,
        requeue_after=_seconds_until(observed.now, requeue),
        mirror_in_flight=in_flight_now(observed.activity, observed.now),
        release_checkpoint=decision.release_checkpoint,
        drop_conditions=drop,
    )


def _models(observed: Observed) -> tuple[tuple[ConditionUpdate, ...], tuple[str, ...]]:
    """ModelsAvailable: every ModelDeployment spec.models names exists in the namespace."""
    models = observed.spec.models
    if not models:
        return (), (ConditionType.MODELS_AVAILABLE,)
    missing = [
        f"spec.models[{index}]: ModelDeployment {ref.name!r} not found"
        for index, ref in enumerate(models)
        if ref.name not in observed.models_present
    ]
    if missing:
        update = ConditionUpdate(
            ConditionType.MODELS_AVAILABLE, False, Reason.MODEL_NOT_FOUND, "; ".join(missing)
        )
    else:
        names = ", ".join(ref.name for ref in models)
        update = ConditionUpdate(
            ConditionType.MODELS_AVAILABLE, True, Reason.MODELS_FOUND, f"found: {names}"
        )
    return (update,), ()


def _phase_event(
    observed: Observed, phase: SessionPhase, reason: str, message: str
) -> tuple[Event, ...]:
    if phase == observed.phase:
        return ()
    return (Event(reason, f"{observed.phase or 'New'} → {phase}: {message}".strip()),)


def _invalid(observed: Observed) -> Decision:
    message = f"the Sandbox made from this session is invalid: {observed.template_error}"
    return Decision(
        phase=SessionPhase.FAILED,
        sandbox=SandboxIntent.LEAVE,
        conditions=(
            ConditionUpdate(ConditionType.READY, False, Reason.INVALID_SANDBOX_TEMPLATE, message),
        ),
        events=(Event(Reason.INVALID_SANDBOX_TEMPLATE, message, warning=True),)
        if observed.phase is not SessionPhase.FAILED
        else (),
        sandbox_ref=observed.sandbox is not None and observed.sandbox.owned,
    )


def _expired(observed: Observed, at: datetime, why: Reason) -> Decision:
    sandbox = observed.sandbox
    retention = observed.spec.retention
    keep_until = at + retention if retention is not None else None
    ours = sandbox is not None and sandbox.owned and not sandbox.deleting
    if not ours:
        intent = SandboxIntent.LEAVE
    elif keep_until is not None and observed.now < keep_until:
        intent = SandboxIntent.HIBERNATE
    else:
        intent = SandboxIntent.DELETE
    what = (
        f"maxLifetime {observed.spec.max_lifetime}"
        if why is Reason.MAX_LIFETIME_REACHED
        else f"sandboxTemplate.shutdownTime {observed.spec.sandbox_template.shutdown_time}"
    )
    kept = (
        f"; its state is kept until {keep_until:%Y-%m-%dT%H:%M:%SZ} (retention {retention})"
        if intent is SandboxIntent.HIBERNATE
        else "; its Sandbox is deleted"
    )
    message = f"{what} reached at {at:%Y-%m-%dT%H:%M:%SZ}{kept}"
    return Decision(
        phase=SessionPhase.EXPIRED,
        sandbox=intent,
        actions=(Action.CLEAR_WAKE_REQUEST,) if observed.activity.wake_requested_at else (),
        conditions=(
            ConditionUpdate(ConditionType.EXPIRED, True, why, message),
            ConditionUpdate(ConditionType.READY, False, why, "the session expired"),
        ),
        events=_phase_event(observed, SessionPhase.EXPIRED, why, message),
        sandbox_ref=sandbox is not None and sandbox.owned,
        requeue_after=_seconds_until(observed.now, [keep_until])
        if intent is SandboxIntent.HIBERNATE
        else None,
    )


def _live(observed: Observed, ends: datetime | None) -> Decision:
    sandbox = observed.sandbox
    if sandbox is None or sandbox.deleting:
        replacing = sandbox is not None
        reason = Reason.SANDBOX_REPLACING if replacing else Reason.SANDBOX_CREATING
        message = (
            "the Sandbox is being deleted; a new one is created when it is gone"
            if replacing
            else "creating the Sandbox"
        )
        return Decision(
            phase=SessionPhase.PENDING,
            sandbox=SandboxIntent.LEAVE if replacing else SandboxIntent.RUN,
            conditions=(ConditionUpdate(ConditionType.READY, False, reason, message),),
            events=_phase_event(observed, SessionPhase.PENDING, reason, message)
            if observed.phase is not None
            else (),
            sandbox_ref=replacing and sandbox is not None and sandbox.owned,
            requeue_after=1.0 if replacing else _seconds_until(observed.now, [ends]),
        )
    if not sandbox.owned:
        message = (
            f"a Sandbox named {observed.name} exists and is not controlled by this"
            " session: delete that Sandbox or give the session another name"
        )
        return Decision(
            phase=SessionPhase.FAILED,
            sandbox=SandboxIntent.LEAVE,
            conditions=(
                ConditionUpdate(ConditionType.READY, False, Reason.SANDBOX_NAME_TAKEN, message),
            ),
            events=(Event(Reason.SANDBOX_NAME_TAKEN, message, warning=True),)
            if observed.phase is not SessionPhase.FAILED
            else (),
        )
    phase = SessionPhase(sandbox.phase.value) if sandbox.phase else SessionPhase.PENDING
    ready = sandbox.ready or ConditionView("False", Reason.SANDBOX_CREATING, "")
    conditions = [
        ConditionUpdate(ConditionType.READY, ready.status == "True", ready.reason, ready.message)
    ]
    if sandbox.hibernated is not None:
        hibernated = sandbox.hibernated
        conditions.append(
            ConditionUpdate(
                ConditionType.HIBERNATED,
                hibernated.status == "True",
                hibernated.reason,
                hibernated.message,
            )
        )
    actions = _carry_activity(observed, sandbox)
    release_at = checkpoint_release_due(observed)
    events = list(_phase_event(observed, phase, ready.reason, _phase_message(sandbox, ready)))
    release = None
    if release_at is not None and observed.now >= release_at:
        # Asked of the Sandbox controller, which releases it and writes the Sandbox's status.
        release = sandbox.checkpoint_id
        if release != sandbox.release_requested:
            events.append(
                Event(
                    Reason.HIBERNATED_STATE_RELEASED,
                    f"hibernated for longer than retention {observed.spec.retention}: the"
                    " memory checkpoint is released; the session wakes cold from its"
                    " workspace",
                )
            )
        release_at = None
    start = observed.now if observed.start_time is None and phase is SessionPhase.RUNNING else None
    return Decision(
        phase=phase,
        sandbox=SandboxIntent.RUN,
        actions=actions,
        conditions=tuple(conditions),
        events=tuple(events),
        sandbox_ref=True,
        start_time=start,
        requeue_after=_seconds_until(observed.now, [ends, release_at]),
        release_checkpoint=release,
    )


def _phase_message(sandbox: SandboxView, ready: ConditionView) -> str:
    if sandbox.phase is SandboxPhase.HIBERNATED and sandbox.hibernated is not None:
        return f"the Sandbox hibernated ({sandbox.hibernated.reason}: {sandbox.hibernated.message})"
    return f"the Sandbox is {sandbox.phase or 'Pending'}" + (
        f" ({ready.message})" if ready.message else ""
    )


def _carry_activity(observed: Observed, sandbox: SandboxView) -> tuple[Action, ...]:
    """Carry the session Lease's wake request and activity to the Sandbox's Lease."""
    actions: list[Action] = []
    if observed.activity.wake_requested_at is not None:
        cannot_wake = observed.spec.operating_mode == "Hibernated"
        acted = sandbox.phase in (SandboxPhase.RUNNING, SandboxPhase.FAILED)
        if cannot_wake or acted:
            actions.append(Action.CLEAR_WAKE_REQUEST)
        elif observed.sandbox_activity.wake_requested_at is None:
            actions.append(Action.FORWARD_WAKE)
    if activity_to_mirror(observed.activity, observed.sandbox_activity, observed.now):
        actions.append(Action.MIRROR_ACTIVITY)
    return tuple(actions)


def in_flight_now(activity: Activity, now: datetime) -> int:
    """The session's in-flight count, or 0 once the router stopped renewing it (a router
    that died mid-request must not keep the session's Sandbox awake)."""
    if activity.in_flight <= 0:
        return 0
    until = activity.in_flight_valid_until
    return activity.in_flight if until is None or now <= until else 0


def in_flight_stale_at(activity: Activity, now: datetime) -> datetime | None:
    """When a count in flight now becomes stale (to carry 0 to the Sandbox then)."""
    until = activity.in_flight_valid_until
    if activity.in_flight <= 0 or until is None or now > until:
        return None
    return until + timedelta(milliseconds=1)


def activity_to_mirror(session: Activity, sandbox: Activity, now: datetime) -> bool:
    """Whether the session's activity is news to its Sandbox: a later request, or a changed
    in-flight count (stale counts read as 0) for the same last request."""
    if session.last_request is None:
        return False
    if sandbox.last_request is None or session.last_request > sandbox.last_request:
        return True
    return (
        session.last_request == sandbox.last_request
        and in_flight_now(session, now) != sandbox.in_flight
    )


def _token(
    observed: Observed,
) -> tuple[tuple[Action, ...], tuple[ConditionUpdate, ...], tuple[Event, ...], datetime | None]:
    """Create the token once; rotate on a new request; drop the previous after the grace."""
    token = observed.token
    if token is None:
        return (Action.CREATE_TOKEN,), (), (), None
    now = observed.now
    request = observed.rotate_request
    if request is not None and request != token.rotation:
        until = now + TOKEN_GRACE
        message = (
            f"token rotated (request {request!r}); the previous token is accepted until"
            f" {until:%Y-%m-%dT%H:%M:%SZ}"
        )
        return (
            (Action.ROTATE_TOKEN,),
            (
                ConditionUpdate(
                    ConditionType.PREVIOUS_TOKEN_ACCEPTED,
                    True,
                    Reason.TOKEN_ROTATED,
                    message,
                ),
            ),
            (Event(Reason.TOKEN_ROTATED, message),),
            until,
        )
    if token.rotation is None and not token.has_previous:
        return (), (), (), None
    expires = token.rotated_at + TOKEN_GRACE if token.rotated_at is not None else None
    if token.has_previous and expires is not None and now < expires:
        message = f"the previous token is accepted until {expires:%Y-%m-%dT%H:%M:%SZ}"
        return (
            (),
            (
                ConditionUpdate(
                    ConditionType.PREVIOUS_TOKEN_ACCEPTED,
                    True,
                    Reason.TOKEN_ROTATED,
                    message,
                ),
            ),
            (),
            expires,
        )
    # A previousToken without a rotation time was not written by the operator: leave it.
    drop = (Action.DROP_PREVIOUS_TOKEN,) if token.has_previous and expires is not None else ()
    return (
        drop,
        (
            ConditionUpdate(
                ConditionType.PREVIOUS_TOKEN_ACCEPTED,
                False,
                Reason.PREVIOUS_TOKEN_EXPIRED,
                f"only the current token is accepted (grace period {TOKEN_GRACE} over)",
            ),
        ),
        (),
        None,
    )


# --- children and status -----------------------------------------------------------------

# The longest pause between retries of a child write that keeps failing.
CHILD_RETRY_MAX = timedelta(minutes=5)


@dataclass(frozen=True)
class ChildrenOutcome:
    """How writing the session's children went in one reconcile."""

    # The API server refused the Sandbox made from the template (422): its message.
    sandbox_refused: str | None = None
    # Other child writes the API refused (quota, RBAC, …), each naming the child.
    failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChildrenReport:
    conditions: tuple[ConditionUpdate, ...]
    events: tuple[Event, ...]
    # Retry a failing child this soon: as long as it has been failing (doubling), capped.
    requeue_after: float | None


def report_children(
    outcome: ChildrenOutcome,
    previous: Mapping[str, tuple[str, datetime | None]],
    now: datetime,
) -> ChildrenReport:
    """Conditions and Events for the children's outcome; `previous` maps each condition type
    to its current (reason, lastTransitionTime). A failing child does not stop the session's
    status, expiry or the other children."""
    conditions: list[ConditionUpdate] = []
    events: list[Event] = []
    if outcome.sandbox_refused is not None:
        message = f"the Sandbox was not updated: {outcome.sandbox_refused}"
        conditions.append(
            ConditionUpdate(ConditionType.READY, False, Reason.INVALID_SANDBOX_TEMPLATE, message)
        )
        if previous.get(ConditionType.READY, ("", None))[0] != Reason.INVALID_SANDBOX_TEMPLATE:
            events.append(Event(Reason.INVALID_SANDBOX_TEMPLATE, message, warning=True))
    requeue = None
    reason, since = previous.get(ConditionType.CHILDREN_READY, ("", None))
    if outcome.failures:
        message = "; ".join(outcome.failures)[:2048]
        conditions.append(
            ConditionUpdate(ConditionType.CHILDREN_READY, False, Reason.CHILD_APPLY_FAILED, message)
        )
        failing = reason == Reason.CHILD_APPLY_FAILED
        if not failing:
            events.append(Event(Reason.CHILD_APPLY_FAILED, message, warning=True))
        elapsed = (now - since).total_seconds() if failing and since is not None else 0.0
        requeue = min(max(1.0, elapsed), CHILD_RETRY_MAX.total_seconds())
    else:
        conditions.append(
            ConditionUpdate(ConditionType.CHILDREN_READY, True, Reason.CHILDREN_APPLIED, "")
        )
    return ChildrenReport(tuple(conditions), tuple(events), requeue)


# status.lastActivityTime moves in steps of at least this much: a busy session's status is not
# rewritten on every renewal of its Lease (the Sandbox's idle clock reads its own Lease).
LAST_ACTIVITY_STEP = timedelta(seconds=30)


def last_activity_time(
    previous: datetime | None, session: Activity, sandbox: SandboxView | None
) -> datetime | None:
    """The latest activity seen (on the session's Lease, or on its Sandbox), in steps of
    LAST_ACTIVITY_STEP."""
    moments = [m for m in (session.last_request, sandbox.last_activity if sandbox else None) if m]
    latest = max(moments) if moments else None
    if latest is None or (previous is not None and latest - previous < LAST_ACTIVITY_STEP):
        return previous
    return latest


# --- usage --------------------------------------------------------------------


@dataclass(frozen=True)
class UsageLedger:
    """What makes the session's usage outlive its sandboxes.

    `retired` sums the sandboxes that are gone; `sandbox_uid` names the one whose usage the
    session's status total holds on top of `retired`. When that Sandbox is gone, the total
    last written is exactly retired + its final usage, so it becomes the new `retired`.
    """

    retired: Usage = field(default_factory=Usage)
    sandbox_uid: str | None = None


def add_usage(retired: Usage, current: Usage | None) -> Usage:
    if current is None:
        return retired
    return Usage(
        active_seconds=round(retired.active_seconds + current.active_seconds, 3),
        idle_seconds=round(retired.idle_seconds + current.idle_seconds, 3),
        hibernated_seconds=round(retired.hibernated_seconds + current.hibernated_seconds, 3),
        gpu_seconds=round(retired.gpu_seconds + current.gpu_seconds, 3),
        wake_count=retired.wake_count + current.wake_count,
        last_wake_latency_seconds=current.last_wake_latency_seconds
        if current.last_wake_latency_seconds is not None
        else retired.last_wake_latency_seconds,
        accounted_until=current.accounted_until or retired.accounted_until,
    )


def account_usage(
    ledger: UsageLedger,
    last_total: Usage | None,
    sandbox_uid: str | None,
    sandbox_usage: Usage | None,
    departed: tuple[str, Usage | None] | None = None,
) -> tuple[UsageLedger, Usage]:
    """The ledger after this observation, and the session's total usage.

    `departed` is the last usage a deleted Sandbox reported (uid, usage), when known: it is
    folded in exactly; otherwise the total last written is.
    """
    if ledger.sandbox_uid is not None and ledger.sandbox_uid != sandbox_uid:
        if departed is not None and departed[0] == ledger.sandbox_uid:
            retired = add_usage(ledger.retired, departed[1])
        else:
            retired = last_total or ledger.retired
        ledger = UsageLedger(retired=retired, sandbox_uid=None)
    if sandbox_uid is not None and ledger.sandbox_uid != sandbox_uid:
        ledger = UsageLedger(retired=ledger.retired, sandbox_uid=sandbox_uid)
    return ledger, add_usage(ledger.retired, sandbox_usage if sandbox_uid else None)


# The session's usage total follows its Sandbox's at phase changes, when a Sandbox is replaced
# or gone, and otherwise at most this often: no status write for every usage tick.
USAGE_REFRESH = timedelta(seconds=60)


def usage_to_write(
    last_total: Usage | None,
    total: Usage,
    sandbox: SandboxView | None,
    *,
    phase_changed: bool,
    ledger_changed: bool,
) -> Usage:
    """The usage total the session's status should hold after this observation: refreshed
    when the session's phase changed, its Sandbox changed phase since the total was taken,
    is being deleted (its final usage), was replaced or is gone; else at most once a minute."""
    if last_total is None or phase_changed or ledger_changed or total == last_total:
        return total
    before, after = last_total.accounted_until, total.accounted_until
    if before is None or after is None or after - before >= USAGE_REFRESH:
        return total
    if sandbox is not None and (
        sandbox.deleting
        or sandbox.phase is SandboxPhase.TERMINATING
        or (sandbox.phase_since is not None and sandbox.phase_since > before)
    ):
        return total
    return last_total
