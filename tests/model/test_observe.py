"""The ModelDeployment controller's pure readers: API objects → the views decide.model takes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kocoon import contract
from kocoon.controllers import model as controller
from kocoon.decide.model import Demand

pytestmark = pytest.mark.unit


def pod(**status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "metadata": {
            "name": "kocoon-model-m-1",
            "uid": "u1",
            "labels": {contract.MODEL_LABEL: "m", contract.REPLICA_LABEL: "1"},
            "annotations": {controller.TEMPLATE_HASH_ANNOTATION: "abc"},
        },
        "spec": {"nodeName": "n1"},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.7",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    base["status"].update(status)
    return base


def test_a_ready_replica() -> None:
    view = controller.replica_view(pod())
    assert view is not None
    assert (view.index, view.ready, view.address, view.node) == (1, True, "10.0.0.7:8000", "n1")
    assert view.template_hash == "abc"


def test_a_pod_without_a_replica_index_is_not_a_replica() -> None:
    body = pod()
    body["metadata"]["labels"][contract.REPLICA_LABEL] = "x"
    assert controller.replica_view(body) is None


def test_a_crash_looping_engine_carries_its_last_exit() -> None:
    engine = {
        "name": contract.ENGINE_CONTAINER,
        "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        "lastState": {
            "terminated": {"reason": "Error", "exitCode": 1, "message": "failed to load model"}
        },
    }
    view = controller.replica_view(
        pod(containerStatuses=[engine], conditions=[{"type": "Ready", "status": "False"}])
    )
    assert view is not None
    assert view.ready is False
    assert (view.restarts, view.waiting_reason) == (4, "CrashLoopBackOff")
    assert view.last_exit == "Error (exit code 1): failed to load model"


def test_an_evicted_pod_says_why() -> None:
    view = controller.replica_view(
        pod(phase="Failed", reason="Evicted", message="The node was low on resource: memory.")
    )
    assert view is not None
    assert view.failed_reason == "Evicted: The node was low on resource: memory."


def test_the_schedulers_refusal_is_read() -> None:
    refused = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/mig-2g.20gb.",
    }
    view = controller.replica_view(pod(phase="Pending", podIP=None, conditions=[refused]))
    assert view is not None
    assert view.unschedulable == refused["message"]
    assert view.address is None


def test_a_held_wake_pod_is_not_ready_until_restored() -> None:
    held = pod()
    held["metadata"]["annotations"].update(
        {"kocoon.io/hold-for-restore": "true", "kocoon.io/restore-from-checkpoint": "m-1-x"}
    )
    view = controller.replica_view(held)
    assert view is not None
    assert (view.held, view.running, view.ready, view.restore_from) == (True, True, False, "m-1-x")
    held["metadata"]["annotations"]["kocoon.io/restored-checkpoint"] = "m-1-x"
    restored = controller.replica_view(held)
    assert restored is not None
    assert restored.ready is True


def lease(renewed: datetime, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"annotations": annotations},
        "spec": {"renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "leaseDurationSeconds": 2},
    }


def test_demand_from_the_routers_lease() -> None:
    now = datetime.now(UTC)
    found = controller.demand(
        lease(
            now,
            **{
                contract.IN_FLIGHT_ANNOTATION: "3",
                contract.QUEUED_ANNOTATION: "2",
                contract.LAST_REQUEST_ANNOTATION: "2026-12-04T12:00:00Z",
                contract.WAKE_REQUESTED_ANNOTATION: "2026-12-04T12:00:01.5Z",
            },
        )
    )
    assert (found.in_flight, found.queued) == (3, 2)
    assert found.last_request == datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert found.wake_requested_at is not None
    assert found.in_flight_valid_until is not None
    assert found.in_flight_valid_until > now


def test_requests_held_by_a_router_that_stopped_renewing_are_not_demand() -> None:
    stale = datetime.now(UTC) - timedelta(minutes=5)
    found = controller.demand(lease(stale, **{contract.QUEUED_ANNOTATION: "4"}))
    assert found.queued == 0


def test_garbage_counts_are_zero_and_no_lease_is_no_demand() -> None:
    found = controller.demand(lease(datetime.now(UTC), **{contract.IN_FLIGHT_ANNOTATION: "many"}))
    assert found.in_flight == 0
    assert controller.demand(None) == Demand()
