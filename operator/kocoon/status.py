"""Pure helpers for the status every Kocoon controller writes: conditions and the patch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kocoon.api.common import Condition


@dataclass(frozen=True)
class ConditionUpdate:
    """What a decision says about one condition; merged into status by `merge_conditions`."""

    type: str
    status: bool
    reason: str
    message: str = ""


def merge_conditions(
    existing: list[Condition],
    updates: tuple[ConditionUpdate, ...],
    generation: int,
    now: datetime,
) -> list[Condition]:
    """Apply updates; a condition's transition time changes only when its status does."""
    by_type = {c.type: c for c in existing}
    for update in updates:
        status = "True" if update.status else "False"
        old = by_type.get(update.type)
        changed = old is None or old.status != status
        by_type[update.type] = Condition(
            type=update.type,
            status=status,
            reason=update.reason,
            message=update.message,
            last_transition_time=now if changed or old is None else old.last_transition_time,
            observed_generation=generation,
        )
    return sorted(by_type.values(), key=lambda c: c.type)


def status_patch(old: Mapping[str, Any], wire: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch taking status from `old` to `wire`, or None when nothing changed.

    A merge patch keeps what it does not mention, so fields that became empty are nulled.
    """
    if wire == dict(old):
        return None
    return {"status": {**{key: None for key in old if key not in wire}, **wire}}


def validation_message(error: ValidationError) -> str:
    """Every problem of a spec that failed its model, each with the path of its field."""
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()
    )
