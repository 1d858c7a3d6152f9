"""What every controller does the same way: one reconcile at a time per object, and a clear
status for an object its model refuses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kocoon.api.conditions import ConditionType, Reason
from kocoon.controllers.context import OperatorContext
from kocoon.kube import client, events
from kocoon.kube.resources import Kind
from kocoon.status import validation_message

FAILED = "Failed"


async def reconcile_locked(
    ctx: OperatorContext,
    kind: Kind,
    namespace: str,
    name: str,
    step: Callable[[OperatorContext, dict[str, Any]], Awaitable[None]],
) -> None:
    """Run `step` on the object's current body, under its lock; skip it once it is deleted."""
    async with ctx.lock(kind.kind, namespace, name):
        body = await client.get(ctx.api, kind, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        try:
            await step(ctx, body)
        except client.ApiError as error:
            if error.status == 403 and "being terminated" in str(error):
                return  # its namespace is going away, and the object with it
            raise


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
    await client.merge_patch(
        ctx.api,
        kind,
        metadata["namespace"],
        metadata["name"],
        {"status": {"phase": FAILED, "conditions": [condition]}},
        subresource="status",
    )
    await events.post(ctx.api, body, events.WARNING, Reason.RECONCILER_ERROR, message)
