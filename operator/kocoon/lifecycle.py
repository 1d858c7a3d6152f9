"""The Sandbox life cycle as a pure function: (spec, what is observed, now) → what to do next.

Handlers gather the inputs and carry out the actions; every decision lives here, so the
whole state machine is tested without a cluster. Each call returns at most one step that
changes the world; the next reconcile sees its effect and takes the next step. That is what
makes an operator restart at any point converge: the state is in the cluster, not in memory.

    Pending → Starting → Running ─(idle, or operatingMode=Hibernated)→ Hibernating → Hibernated
                 ▲                                                                  │
                 └──────── Waking ◄─(wake request, or operatingMode≠Hibernated)─────┘
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from kocoon.api.conditions import ConditionType, Reason, SandboxPhase
from kocoon.api.sandbox import Checkpoint, SandboxSpec
from kocoon.status import ConditionUpdate

# Requests seen this recently count as activity even with nothing in flight.
ACTIVE_WINDOW = timedelta(seconds=30)
# Pods replaced after failing (evicted, exited) or container restarts of one pod (a crash
# loop) before the sandbox is Failed; a spec change starts the count again.
MAX_POD_FAILURES = 5


@dataclass(frozen=True)
class PodView:
    """What the operator reads from the sandbox's pod."""

    uid: str
    phase: str
    ready: bool
    node: str | None = None
    ip: str | None = None
    deleting: bool = False
    unschedulable: str | None = None
    restore_from: str | None = None
    # The operator marks a pod whose memory checkpoint failed, so hibernation goes on
    # without memory instead of retrying forever.
    checkpoint_failed: bool = False
    # A wake pod whose container runs the hold command until the node agent restores the
    # checkpoint beside it; `restored` names the checkpoint once that happened.
    held: bool = False
    restored: str | None = None
    # The pod ended (phase Failed, e.g. evicted, or Succeeded): it never runs again.
    ended: bool = False
    # Why its container last stopped or waits (OOMKilled, Error, CrashLoopBackOff…), and how
    # often the kubelet restarted it in this pod.
    container_reason: str | None = None
    container_restarts: int = 0

    @property
    def placeholder_only(self) -> bool:
        """A wake pod with nothing restored into it: it runs no workload at all."""
        return self.held and self.restored is None


@dataclass(frozen=True)
class Activity:
    """What the router reported on the activity Lease."""

    last_request: datetime | None = None
    in_flight: int = 0
    wake_requested_at: datetime | None = None
    # The router renews the Lease while requests are in flight; a count it stopped renewing
    # (the router died mid-request) is stale after this moment and no longer keeps it awake.
    in_flight_valid_until: datetime | None = None


def requests_in_flight(observed: Observed) -> bool:
    activity = observed.activity
    if activity.in_flight <= 0:
        return False
    until = activity.in_flight_valid_until
    return until is None or observed.now <= until


@dataclass(frozen=True)
class Observed:
    name: str
    spec: SandboxSpec
    generation: int
    created: datetime
    phase: SandboxPhase | None
    checkpoint: Checkpoint | None
    pod: PodView | None
    activity: Activity
    now: datetime
    # Whether a memory checkpoint is possible for this sandbox's runtime class at all.
    memory_checkpoint_supported: bool = True
    # When the sandbox last became Running (the Ready condition's transition time).
    running_since: datetime | None = None
    # How it hibernates (`defaults.effective_hibernation`); None: decided from
    # `memory_checkpoint_supported` alone.
    hibernation: str | None = None
    # Pods replaced after they failed, since the spec last changed (status.restarts).
    restarts: int = 0
    # The checkpoint its AgentSession asked to release (the release-checkpoint annotation;
    # "" for whichever it has), or None.
    release_requested: str | None = None


class Action(StrEnum):
    CREATE_POD = "CreatePod"
    CHECKPOINT = "Checkpoint"
    DELETE_POD = "DeletePod"
    RESTORE = "Restore"
    RELEASE_CHECKPOINT = "ReleaseCheckpoint"
    CLEAR_WAKE_REQUEST = "ClearWakeRequest"
    DELETE_SANDBOX = "DeleteSandbox"


@dataclass(frozen=True)
class Decision:
    phase: SandboxPhase
    actions: tuple[Action, ...] = ()
    conditions: tuple[ConditionUpdate, ...] = ()
    # Why the phase changed, for the Event and the log; empty when it did not.
    reason: Reason | None = None
    message: str = ""
    # Ask to be called again this soon even if nothing changes (idle deadlines, polling).
    requeue_after: float | None = None
    # A failed pod is being replaced: one more for status.restarts.
    count_restart: bool = False
    # The Event for `reason` is a Warning (something is wrong), not Normal.
    warning: bool = False


# How long a hibernation or wake waits for a node agent that cannot be reached (restarting,
# a network blip) before it goes on without memory: the checkpoint or restore is asked again
# with the reconciler's backoff meanwhile.
AGENT_OUTAGE_GRACE = timedelta(seconds=30)


def waits_for_agent(phase_since: datetime | None, now: datetime) -> bool:
    """Whether a checkpoint or restore the agent could not be reached for is asked again (True)
    or given up for a hibernation without memory / a cold wake (False)."""
    return phase_since is not None and now - phase_since < AGENT_OUTAGE_GRACE


def checkpoint_id(sandbox: str, pod_uid: str) -> str:
    """One checkpoint per pod incarnation: asking twice (after a restart) names the same one."""
    return f"{sandbox}-{pod_uid.replace('-', '')[:12]}"


def hibernation_mode(spec: SandboxSpec, memory_supported: bool) -> str:
    if spec.hibernation is not None:
        return spec.hibernation
    return "memory" if memory_supported else "filesystem"


def mode_of(observed: Observed) -> str:
    """How this sandbox hibernates: the effective mode the controller passed in, else the
    spec's, else memory where it is supported."""
    if observed.hibernation is not None:
        return observed.hibernation
    return hibernation_mode(observed.spec, observed.memory_checkpoint_supported)


def last_activity(observed: Observed) -> datetime:
    """The most recent sign of use: a request, or the moment the sandbox came up."""
    candidates = [observed.created]
    if observed.activity.last_request is not None:
        candidates.append(observed.activity.last_request)
    if observed.running_since is not None:
        candidates.append(observed.running_since)
    return max(candidates)


def is_active(observed: Observed) -> bool:
    """Whether the sandbox is in use now (for metering): a request in flight, or one seen within
    the active window, which is never longer than the idle timeout."""
    activity = observed.activity
    if requests_in_flight(observed):
        return True
    window = ACTIVE_WINDOW
    if observed.spec.idle_timeout is not None:
        window = min(window, observed.spec.idle_timeout)
    return activity.last_request is not None and observed.now - activity.last_request < window


def idle_deadline(observed: Observed) -> datetime | None:
    """When the sandbox becomes idle enough to hibernate, or None if it never does."""
    spec = observed.spec
    if spec.operating_mode != "Auto" or spec.idle_timeout is None:
        return None
    if mode_of(observed) == "none":
        return None
    return last_activity(observed) + spec.idle_timeout


def wake_requested(observed: Observed) -> bool:
    return observed.activity.wake_requested_at is not None


def wants_asleep(observed: Observed) -> tuple[bool, Reason | None]:
    spec = observed.spec
    if spec.operating_mode == "Hibernated":
        return True, Reason.REQUESTED_BY_USER
    if spec.operating_mode == "Running":
        return False, None
    deadline = idle_deadline(observed)
    if deadline is None or requests_in_flight(observed):
        return False, None
    return observed.now >= deadline, Reason.IDLE_TIMEOUT


def _expired(observed: Observed) -> bool:
    shutdown = observed.spec.shutdown_time
    return shutdown is not None and observed.now >= shutdown


def decide(observed: Observed) -> Decision:
    """The next step, with when to look again: the sooner of the step's own requeue and the
    shutdownTime, so expiry fires on time even with no other deadline."""
    decision = _decide(observed)
    if _expired(observed) or observed.spec.shutdown_time is None:
        return decision
    until = _seconds_until(observed, observed.spec.shutdown_time)
    if decision.requeue_after is None or (until is not None and until < decision.requeue_after):
        return replace(decision, requeue_after=until)
    return decision


def _decide(observed: Observed) -> Decision:
    if _expired(observed):
        return _expire(observed)
    phase = observed.phase or SandboxPhase.PENDING
    if phase in (SandboxPhase.HIBERNATING,):
        return _continue_hibernating(observed)
    if phase is SandboxPhase.HIBERNATED:
        return _hibernated(observed)
    if phase is SandboxPhase.WAKING:
        return _waking(observed)
    if phase is SandboxPhase.FAILED and observed.restarts >= MAX_POD_FAILURES:
        return _failed(observed)
    return _awake(observed, phase)


def _failed(observed: Observed) -> Decision:
    """Failed after repeated pod failures: no pod until the spec changes (which resets the
    count), so a crash loop does not run forever."""
    pod = observed.pod
    actions = (Action.DELETE_POD,) if pod is not None and not pod.deleting else ()
    return Decision(SandboxPhase.FAILED, actions)


def _pod_failure(observed: Observed, phase: SandboxPhase) -> Decision | None:
    """A pod that ended (evicted, exited) is replaced and counted; one whose container keeps
    crashing counts its restarts. After MAX_POD_FAILURES the sandbox is Failed, with the
    container's reason."""
    pod = observed.pod
    if pod is None or pod.deleting:
        return None
    why = pod.container_reason or pod.phase
    if pod.ended:
        failures = observed.restarts + 1
        if failures >= MAX_POD_FAILURES:
            return _give_up(observed, why, failures, count=True)
        return Decision(
            phase if phase is SandboxPhase.WAKING else SandboxPhase.STARTING,
            (Action.DELETE_POD,),
            (
                ConditionUpdate(
                    ConditionType.READY,
                    False,
                    Reason.POD_FAILED,
                    f"the pod ended ({why}); replacing it ({failures} of {MAX_POD_FAILURES})",
                ),
            ),
            reason=Reason.POD_FAILED,
            message=f"the pod ended ({why}); replacing it",
            count_restart=True,
            warning=True,
        )
    # A crash loop: restarting again and again and not ready now (a long-lived pod that
    # restarted now and then, and runs, is not failing).
    if not pod.ready and observed.restarts + pod.container_restarts >= MAX_POD_FAILURES:
        return _give_up(observed, why, observed.restarts + pod.container_restarts, count=False)
    return None


def _give_up(observed: Observed, why: str, failures: int, *, count: bool) -> Decision:
    message = f"the pod failed {failures} times, last: {why}; fix the spec to retry"
    return Decision(
        SandboxPhase.FAILED,
        (Action.DELETE_POD,),
        (ConditionUpdate(ConditionType.READY, False, Reason.POD_FAILED, message),),
        reason=Reason.POD_FAILED,
        message=message,
        count_restart=count,
        warning=True,
    )


def _seconds_until(observed: Observed, moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return max(0.5, (moment - observed.now).total_seconds())


def _expire(observed: Observed) -> Decision:
    actions: list[Action] = []
    if observed.pod is not None and not observed.pod.deleting:
        actions.append(Action.DELETE_POD)
    if observed.checkpoint is not None:
        actions.append(Action.RELEASE_CHECKPOINT)
    if observed.spec.shutdown_policy == "Delete":
        actions.append(Action.DELETE_SANDBOX)
    expired = ConditionUpdate(
        ConditionType.EXPIRED,
        True,
        Reason.SHUTDOWN_TIME_REACHED,
        f"shutdownTime {observed.spec.shutdown_time} reached;"
        f" policy {observed.spec.shutdown_policy}",
    )
    ready = ConditionUpdate(
        ConditionType.READY, False, Reason.SANDBOX_EXPIRED, "the sandbox expired"
    )
    return Decision(
        SandboxPhase.EXPIRED,
        tuple(actions),
        (expired, ready),
        reason=Reason.SHUTDOWN_TIME_REACHED if observed.phase is not SandboxPhase.EXPIRED else None,
        message="shutdownTime reached",
    )


def _awake(observed: Observed, phase: SandboxPhase) -> Decision:
    """Pending, Starting, Running (and Failed, which retries): keep a pod up, or hibernate."""
    pod = observed.pod
    failure = _pod_failure(observed, phase)
    asleep, why = wants_asleep(observed)
    clear = (Action.CLEAR_WAKE_REQUEST,) if wake_requested(observed) else ()
    # Idle is a property of a running sandbox: one still starting has not been used yet.
    idle_while_running = why is Reason.IDLE_TIMEOUT and phase is SandboxPhase.RUNNING
    if asleep and why is not None and (why is Reason.REQUESTED_BY_USER or idle_while_running):
        return Decision(
            SandboxPhase.HIBERNATING,
            clear,
            (_hibernated_condition(False, Reason.NOT_HIBERNATED),),
            reason=why,
            message=_hibernate_message(observed, why),
        )
    if failure is not None:
        return failure
    if pod is not None and pod.placeholder_only and not pod.deleting:
        return Decision(
            SandboxPhase.STARTING,
            (Action.DELETE_POD, *clear),
            (ConditionUpdate(ConditionType.READY, False, Reason.POD_PENDING, "replacing the pod"),),
        )
    if pod is None or pod.deleting:
        actions = () if pod is not None else (Action.CREATE_POD,)
        return Decision(
            SandboxPhase.STARTING
            if phase is not SandboxPhase.PENDING or pod
            else SandboxPhase.PENDING,
            actions + clear,
            (ConditionUpdate(ConditionType.READY, False, Reason.POD_PENDING, "creating the pod"),),
            reason=None,
            requeue_after=2.0 if pod is not None else None,
        )
    if pod.unschedulable:
        return Decision(
            SandboxPhase.PENDING,
            clear,
            (
                ConditionUpdate(
                    ConditionType.POD_SCHEDULED, False, Reason.UNSCHEDULABLE, pod.unschedulable
                ),
                ConditionUpdate(ConditionType.READY, False, Reason.POD_PENDING, pod.unschedulable),
            ),
            reason=Reason.UNSCHEDULABLE,
            message=pod.unschedulable,
            warning=True,
        )
    if not pod.ready:
        return Decision(
            SandboxPhase.STARTING,
            clear,
            (
                ConditionUpdate(ConditionType.POD_SCHEDULED, True, Reason.POD_SCHEDULED, ""),
                ConditionUpdate(
                    ConditionType.READY,
                    False,
                    Reason.POD_NOT_READY,
                    f"pod is {pod.phase}"
                    + (f" ({pod.container_reason})" if pod.container_reason else ""),
                ),
            ),
        )
    deadline = idle_deadline(observed)
    return Decision(
        SandboxPhase.RUNNING,
        clear,
        (
            ConditionUpdate(ConditionType.POD_SCHEDULED, True, Reason.POD_SCHEDULED, ""),
            ConditionUpdate(ConditionType.READY, True, Reason.POD_READY, ""),
            _hibernated_condition(False, Reason.NOT_HIBERNATED),
        ),
        reason=Reason.POD_READY if phase is not SandboxPhase.RUNNING else None,
        message=f"running on {pod.node}",
        requeue_after=_seconds_until(observed, deadline),
    )


def _hibernate_message(observed: Observed, why: Reason) -> str:
    mode = mode_of(observed)
    if why is Reason.IDLE_TIMEOUT:
        return f"idle for {observed.spec.idle_timeout}; hibernating ({mode})"
    return f"operatingMode is Hibernated; hibernating ({mode})"


def _hibernated_condition(hibernated: bool, reason: Reason, message: str = "") -> ConditionUpdate:
    return ConditionUpdate(ConditionType.HIBERNATED, hibernated, reason, message)


def _continue_hibernating(observed: Observed) -> Decision:
    pod = observed.pod
    mode = mode_of(observed)
    not_ready = ConditionUpdate(
        ConditionType.READY, False, Reason.SANDBOX_HIBERNATED, "hibernating"
    )
    if pod is not None and not pod.deleting:
        wanted = checkpoint_id(observed.name, pod.uid)
        needs_checkpoint = (
            mode == "memory"
            and pod.ready
            and not pod.checkpoint_failed
            and not pod.placeholder_only
            and (observed.checkpoint is None or observed.checkpoint.id != wanted)
        )
        action = Action.CHECKPOINT if needs_checkpoint else Action.DELETE_POD
        return Decision(SandboxPhase.HIBERNATING, (action,), (not_ready,))
    if pod is not None:
        return Decision(SandboxPhase.HIBERNATING, (), (not_ready,), requeue_after=1.0)
    return Decision(
        SandboxPhase.HIBERNATED,
        (),
        (
            ConditionUpdate(ConditionType.READY, False, Reason.SANDBOX_HIBERNATED, "hibernated"),
            _hibernated_condition(
                True,
                Reason.REQUESTED_BY_USER
                if observed.spec.operating_mode == "Hibernated"
                else Reason.IDLE_TIMEOUT,
                f"mode {mode}",
            ),
        ),
        reason=Reason.SANDBOX_HIBERNATED,
        message=(
            f"hibernated with checkpoint {observed.checkpoint.id}"
            if observed.checkpoint
            else "hibernated; the workspace is kept"
            if mode != "none"
            else "stopped"
        ),
    )


def _hibernated(observed: Observed) -> Decision:
    spec = observed.spec
    wake = spec.operating_mode == "Running" or (
        spec.operating_mode == "Auto" and wake_requested(observed)
    )
    if observed.pod is not None and not observed.pod.deleting:
        # A pod that should not exist (created by hand, or a delete that did not finish).
        return Decision(SandboxPhase.HIBERNATED, (Action.DELETE_POD,))
    if not wake:
        stale = (Action.CLEAR_WAKE_REQUEST,) if wake_requested(observed) else ()
        release = _release_requested(observed)
        if release is not None:
            return Decision(
                SandboxPhase.HIBERNATED,
                (Action.RELEASE_CHECKPOINT, *stale),
                (release,),
                reason=Reason.HIBERNATED_STATE_RELEASED,
                message=release.message,
            )
        return Decision(SandboxPhase.HIBERNATED, stale)
    why = "a request arrived" if wake_requested(observed) else "operatingMode is Running"
    return Decision(
        SandboxPhase.WAKING,
        (),
        (ConditionUpdate(ConditionType.READY, False, Reason.SANDBOX_WAKING, why),),
        reason=Reason.SANDBOX_WAKING,
        message=f"waking: {why}",
    )


def _release_requested(observed: Observed) -> ConditionUpdate | None:
    """The AgentSession asked to drop the hibernated memory (its retention ended): release the
    checkpoint it named and stay Hibernated, without memory."""
    wanted, checkpoint = observed.release_requested, observed.checkpoint
    if wanted is None or checkpoint is None or wanted not in ("", checkpoint.id):
        return None
    return ConditionUpdate(
        ConditionType.CHECKPOINT_AVAILABLE,
        False,
        Reason.HIBERNATED_STATE_RELEASED,
        f"checkpoint {checkpoint.id} released on request; the next wake starts cold",
    )


def _waking(observed: Observed) -> Decision:
    pod = observed.pod
    waking = ConditionUpdate(ConditionType.READY, False, Reason.SANDBOX_WAKING, "waking")
    if pod is None:
        return Decision(SandboxPhase.WAKING, (Action.CREATE_POD,), (waking,))
    if pod.deleting:
        return Decision(SandboxPhase.WAKING, (), (waking,), requeue_after=1.0)
    failure = _pod_failure(observed, SandboxPhase.WAKING)
    if failure is not None:
        return failure
    if pod.unschedulable:
        return Decision(
            SandboxPhase.WAKING,
            (),
            (
                ConditionUpdate(
                    ConditionType.POD_SCHEDULED, False, Reason.UNSCHEDULABLE, pod.unschedulable
                ),
                waking,
            ),
            reason=Reason.UNSCHEDULABLE,
            message=pod.unschedulable,
            warning=True,
        )
    if not pod.ready:
        return Decision(SandboxPhase.WAKING, (), (waking,))
    if observed.checkpoint is not None and pod.restore_from == observed.checkpoint.id:
        return Decision(SandboxPhase.WAKING, (Action.RESTORE,), (waking,))
    if pod.placeholder_only:
        # Its restore will not happen (it failed, or the checkpoint is gone): a new pod
        # starts the workload cold from the workspace.
        return Decision(SandboxPhase.WAKING, (Action.DELETE_POD,), (waking,))
    clear = (Action.CLEAR_WAKE_REQUEST,) if wake_requested(observed) else ()
    return Decision(
        SandboxPhase.RUNNING,
        clear,
        (
            ConditionUpdate(ConditionType.READY, True, Reason.POD_READY, ""),
            _hibernated_condition(False, Reason.NOT_HIBERNATED),
        ),
        reason=Reason.POD_READY,
        message=f"awake on {pod.node}",
    )
