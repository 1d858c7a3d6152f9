"""What every controller does the same way: errors at the reconcile boundary in status (with a
rate-limited Event), and a clear status for an object its model refuses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kocoon.api.conditions import ConditionType, Reason
from kocoon.controllers.context import OperatorContext
from kocoon.kube import client, events
from kocoon.kube.resources import Kind
from kocoon.status import validation_message

FAILED = "Failed"


async def report_invalid(
    ctx: OperatorContext, kind: Kind, body: dict[str, Any], error: ValidationError
) -> None:
    """Mark an object its model refuses as Failed, with the fields at fault; once, not on
    every reconcile."""
    if (body.get("status") or {}).get("phase") == FAILED:
        return
    metadata = body["metadata"]
    message = f"invalid {kind.kind}: {validation_message(error)}"[:4096]
    condition = {
        "type": ConditionType.READY.value,
        "status": "False",
        "reason": Reason.RECONCILER_ERROR.value,
        "message": message,
        "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "observedGeneration": metadata.get("generation", 0),
    }
    try:
        await client.merge_patch(
            ctx.api,
            kind,
            metadata["namespace"],
            metadata["name"],
            {"status": {"phase": FAILED, "conditions": [condition]}},
            subresource="status",
            resource_version=metadata.get("resourceVersion"),
        )
    except client.Conflict:
        return  # it moved: the next reconcile sees the newer object

    await events.post(ctx.api, body, events.WARNING, Reason.RECONCILER_ERROR, message)


# --- errors at the reconcile boundary ---------------------------------------------------------


def error_message(error: Exception) -> str:
    """What an error says in status: the API server's own message when it has one."""
    if isinstance(error, client.ApiError):
        return f"{error.status}: {error.message}"
    return str(error) or type(error).__name__


def should_post_event(failures: int) -> bool:
    """Rate limit for the Warning Event of a failing object: on the 1st, 2nd, 4th, 8th…
    consecutive failure, so with the worker's doubling backoff, ever rarer."""
    return failures > 0 and failures & (failures - 1) == 0


def _ready_error(body: dict[str, Any], message: str, now: datetime) -> list[dict[str, Any]]:
    """The object's conditions with Ready=False/ReconcilerError; the rest as they are."""
    conditions = list((body.get("status") or {}).get("conditions") or [])
    ready = next((c for c in conditions if c.get("type") == ConditionType.READY.value), None)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    transition = (
        ready.get("lastTransitionTime") if ready and ready.get("status") == "False" else None
    )
    updated = {
        "type": ConditionType.READY.value,
        "status": "False",
        "reason": Reason.RECONCILER_ERROR.value,
        "message": message,
        "lastTransitionTime": transition or stamp,
        "observedGeneration": body["metadata"].get("generation", 0),
    }
    others = [c for c in conditions if c.get("type") != ConditionType.READY.value]
    return sorted([*others, updated], key=lambda c: str(c.get("type")))


async def report_error(
    ctx: OperatorContext,
    kind: Kind,
    body: dict[str, Any] | None,
    error: Exception,
    failures: int,
) -> None:
    """Say in the object's status why its reconcile failed (Ready=False, ReconcilerError, the
    API's message) and post a rate-limited Warning Event. The status is written only when the
    message changed (and not while the object is being deleted), with the object's
    resourceVersion; a conflict is left to the next run."""
    if body is None:
        return
    metadata = body["metadata"]
    message = error_message(error)[:4096]
    conditions = _ready_error(body, message, datetime.now(UTC))
    deleting = bool(metadata.get("deletionTimestamp"))  # its status says Terminating
    if not deleting and conditions != list((body.get("status") or {}).get("conditions") or []):
        try:
            await client.merge_patch(
                ctx.api,
                kind,
                metadata["namespace"],
                metadata["name"],
                {"status": {"conditions": conditions}},
                subresource="status",
                resource_version=metadata.get("resourceVersion"),
            )
        except client.ApiError as write_error:
            if write_error.status not in (404, 409):
                raise
    if should_post_event(failures):
        suffix = f" (failed {failures} times in a row)" if failures > 1 else ""
        await events.post(
            ctx.api, body, events.WARNING, Reason.RECONCILER_ERROR, f"{message}{suffix}"
        )


def namespace_terminating(error: Exception) -> bool:
    """A write refused because the object's namespace is being deleted: nothing to fix."""
    return (
        isinstance(error, client.ApiError)
        and error.status == 403
        and "being terminated" in str(error)
    )
