"""How a reconcile failure reads in status: the API's message, and a rate-limited Event."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kocoon.controllers import common
from kocoon.kube.client import ApiError

pytestmark = pytest.mark.unit


def test_the_api_servers_own_message_is_what_status_says() -> None:
    error = ApiError(403, "Forbidden", {"message": "exceeded quota: q, requested: pods=1"})
    assert common.error_message(error) == "403: exceeded quota: q, requested: pods=1"
    assert common.error_message(ApiError(500, "Internal", {})) == "500: 500 Internal"
    assert common.error_message(RuntimeError()) == "RuntimeError"


def test_warning_events_get_rarer_as_failures_repeat() -> None:
    posted = [n for n in range(1, 70) if common.should_post_event(n)]
    assert posted == [1, 2, 4, 8, 16, 32, 64]
    assert not common.should_post_event(0)


def test_ready_turns_false_with_the_error_and_other_conditions_stay() -> None:
    body = {
        "metadata": {"generation": 3},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Hibernated", "status": "False", "reason": "NotHibernated"},
            ]
        },
    }
    now = datetime(2026, 12, 4, 7, 0, tzinfo=UTC)
    conditions = common._ready_error(body, "422: spec.ports: invalid", now)
    ready = next(c for c in conditions if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "ReconcilerError"
    assert ready["message"] == "422: spec.ports: invalid"
    assert ready["lastTransitionTime"] == "2026-12-04T07:00:00Z"
    assert ready["observedGeneration"] == 3
    assert {"type": "Hibernated", "status": "False", "reason": "NotHibernated"} in conditions
    # Already False: the transition time stays, so a repeated failure writes nothing new.
    body["status"]["conditions"] = conditions
    later = common._ready_error(body, "422: spec.ports: invalid", datetime(2026, 12, 5, tzinfo=UTC))
    assert later == conditions
