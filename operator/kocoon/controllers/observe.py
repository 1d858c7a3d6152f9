"""Pure readers: API objects (plain dicts) → the views the life cycle decides on."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from kocoon.builders import names
from kocoon.lifecycle import Activity, PodView

STALE_IN_FLIGHT_SECONDS = 60
STALE_IN_FLIGHT_LEASES = 10
# Set by the operator on a pod whose memory checkpoint failed (value: the reason).
CHECKPOINT_FAILED_ANNOTATION = "kocoon.io/checkpoint-failed"


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def pod_view(pod: dict[str, Any] | None) -> PodView | None:
    if pod is None:
        return None
    metadata = pod.get("metadata", {})
    status = pod.get("status", {})
    annotations = metadata.get("annotations") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {}).get("status") == "True"
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = None
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        unschedulable = str(scheduled.get("message") or "no node can run the pod")
    reason, restarts = container_state(pod)
    phase = str(status.get("phase") or "Pending")
    return PodView(
        uid=str(metadata.get("uid", "")),
        phase=str(status.get("phase") or "Pending"),
        ready=ready and status.get("phase") == "Running",
        node=pod.get("spec", {}).get("nodeName"),
        ip=status.get("podIP"),
        deleting=metadata.get("deletionTimestamp") is not None,
        unschedulable=unschedulable,
        restore_from=annotations.get(names.RESTORE_FROM_ANNOTATION),
        checkpoint_failed=CHECKPOINT_FAILED_ANNOTATION in annotations,
        held=annotations.get(names.HOLD_FOR_RESTORE_ANNOTATION) == "true",
        restored=annotations.get(names.RESTORED_ANNOTATION),
        ended=phase in ("Failed", "Succeeded"),
        container_reason=reason or status.get("reason"),
        container_restarts=restarts,
    )


def container_state(pod: dict[str, Any]) -> tuple[str | None, int]:
    """Why the sandbox container waits or last stopped (with the kubelet's message when it is
    short), and how often it restarted in this pod."""
    for container in pod.get("status", {}).get("containerStatuses") or []:
        if container.get("name") != names.CONTAINER_NAME:
            continue
        state = container.get("state") or {}
        last = (container.get("lastState") or {}).get("terminated")
        detail = state.get("waiting") or state.get("terminated") or last or {}
        reason = detail.get("reason")
        if reason and detail.get("exitCode") is not None:
            reason = f"{reason}, exit code {detail['exitCode']}"
        return reason, int(container.get("restartCount") or 0)
    return None, 0


def activity(lease: dict[str, Any] | None) -> Activity:
    if lease is None:
        return Activity()
    annotations = lease.get("metadata", {}).get("annotations") or {}
    try:
        in_flight = max(0, int(annotations.get(names.IN_FLIGHT_ANNOTATION, "0")))
    except ValueError:
        in_flight = 0
    last = parse_time(annotations.get(names.LAST_REQUEST_ANNOTATION))
    spec = lease.get("spec", {})
    renew = parse_time(spec.get("renewTime"))
    valid_until = None
    if renew is not None and in_flight > 0:
        # Several missed renewals, and at least a minute: a slow router is not a dead one.
        seconds = max(
            STALE_IN_FLIGHT_SECONDS,
            STALE_IN_FLIGHT_LEASES * int(spec.get("leaseDurationSeconds") or 0),
        )
        valid_until = renew + timedelta(seconds=seconds)
    return Activity(
        last_request=last or renew,
        in_flight=in_flight,
        wake_requested_at=parse_time(annotations.get(names.WAKE_REQUESTED_ANNOTATION)),
        in_flight_valid_until=valid_until,
    )


def image_digest(pod: dict[str, Any] | None) -> str | None:
    """The image the sandbox container runs, by digest, as the runtime reports it."""
    for status in (pod or {}).get("status", {}).get("containerStatuses") or []:
        if status.get("name") == names.CONTAINER_NAME and status.get("imageID"):
            return str(status["imageID"])
    return None


def container_id(pod: dict[str, Any] | None) -> str | None:
    """The runtime's id of the sandbox container (without the `containerd://` scheme)."""
    if pod is None:
        return None
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == names.CONTAINER_NAME and status.get("containerID"):
            return str(status["containerID"]).split("://", 1)[-1]
    return None
