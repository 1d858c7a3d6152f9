"""The status/Secret/Lease contract with the operator, as pure functions over plain dicts."""

from __future__ import annotations

import base64
import datetime

import pytest

from kocoon.router import kube
from kocoon.router.activity import ActivitySnapshot
from kocoon.router.auth import hash_token
from kocoon.router.table import RoutingTable, TargetKey, TargetKind

pytestmark = pytest.mark.unit


def sandbox(name: str, **status: object) -> dict[str, object]:
    return {"metadata": {"namespace": "ns", "name": name}, "status": status}


READY = [{"type": "Ready", "status": "True"}, {"type": "Hibernated", "status": "False"}]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"podIP": "10.1.2.3", "port": 9000, "serviceFQDN": "s.ns.svc"}, ("10.1.2.3:9000",)),
        ({"serviceFQDN": "s1.ns.svc.cluster.local", "port": 80}, ("s1.ns.svc.cluster.local:80",)),
        ({"podIP": "fd00::5", "port": 8080}, ("[fd00::5]:8080",)),
        ({"endpoint": "https://s1.ns.sessions.example/", "port": 8080}, ()),  # the router's URL
        ({"podIP": "10.1.2.3"}, ()),
        ({}, ()),
    ],
)
def test_endpoints_from_status(status: dict[str, object], expected: tuple[str, ...]) -> None:
    assert kube.endpoints(status) == expected


def test_events_build_a_session_route() -> None:
    table = RoutingTable()
    secret = {
        "metadata": {"namespace": "ns", "name": "s1-token"},
        "data": {
            "token": base64.b64encode(b"new").decode(),
            "previousToken": base64.b64encode(b"old").decode(),
        },
    }
    session = {
        "metadata": {"namespace": "ns", "name": "s1"},
        "status": {
            "phase": "Running",
            "sandboxRef": {"name": "s1-x"},
            "tokenSecretRef": {"name": "s1-token"},
        },
    }
    kube.apply_event(table, kube.SecretKind.TOKEN, "ADDED", secret)
    kube.apply_event(table, TargetKind.SESSION, "ADDED", session)
    kube.apply_event(
        table,
        TargetKind.SANDBOX,
        "MODIFIED",
        sandbox("s1-x", phase="Running", conditions=READY, podIP="10.0.0.7", port=8080),
    )
    route = table.resolve(TargetKey(TargetKind.SESSION, "ns", "s1"))
    assert route is not None
    assert route.forwardable
    assert route.endpoints == ("10.0.0.7:8080",)
    assert route.token_hashes == {hash_token("new"), hash_token("old")}
    kube.apply_event(table, TargetKind.SANDBOX, "DELETED", sandbox("s1-x"))
    route = table.resolve(TargetKey(TargetKind.SESSION, "ns", "s1"))
    assert route is not None
    assert not route.forwardable


def test_not_ready_unless_the_ready_condition_is_true() -> None:
    view = kube.backend_view(
        sandbox("b", phase="Waking", conditions=[{"type": "Ready", "status": "False"}])
    )
    assert (view.phase, view.ready) == ("Waking", False)


def test_lease_name_and_renewal_patch() -> None:
    key = TargetKey(TargetKind.SESSION, "ns", "s1")
    assert kube.lease_name(key) == "kocoon-activity-agentsession-s1"
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, 600000, datetime.UTC)
    patch = kube.renewal_patch(ActivitySnapshot(2, now.timestamp() - 1), "router-0", now, 5.0)
    assert patch["spec"] == {
        "holderIdentity": "router-0",
        "renewTime": "2026-01-02T03:04:05.600000Z",
        "leaseDurationSeconds": 15,
    }
    annotations = patch["metadata"]["annotations"]
    assert annotations[kube.LAST_REQUEST_ANNOTATION] == "2026-01-02T03:04:04.600000Z"
    assert annotations[kube.IN_FLIGHT_ANNOTATION] == "2"


def test_wake_is_needed_only_when_not_already_requested() -> None:
    key = TargetKey(TargetKind.SANDBOX, "ns", "b")
    assert kube.wake_needed(None)
    lease = kube.new_lease(key)
    assert kube.wake_needed(lease)
    lease["metadata"]["annotations"][kube.WAKE_REQUESTED_ANNOTATION] = "2026-01-01T00:00:00Z"
    assert not kube.wake_needed(lease)
    assert lease["metadata"]["labels"] == {
        kube.TARGET_KIND_LABEL: "sandbox",
        kube.TARGET_NAME_LABEL: "b",
    }


def test_model_status_becomes_backends_with_ready_and_sleeping() -> None:
    model = {
        "metadata": {"namespace": "ns", "name": "chat"},
        "spec": {"route": {"servedModelName": "from-spec"}},
        "status": {
            "phase": "Ready",
            "servedModelName": "smollm2",
            "backends": [
                {"pod": "chat-0", "address": "10.0.0.5:8000", "ready": True, "sleeping": False},
                {"pod": "chat-1", "address": "10.0.0.6:8000", "ready": True, "sleeping": True},
                {"pod": "chat-2", "address": "10.0.0.7:8000", "ready": False},
                {"pod": "chat-3"},  # no address yet: not a backend
            ],
        },
    }
    view = kube.model_view(model)
    assert (view.phase, view.served_name) == ("Ready", "smollm2")
    assert view.endpoints == ("10.0.0.5:8000",)  # ready and awake only
    assert [b.pod for b in view.backends] == ["chat-0", "chat-1", "chat-2"]
    del model["status"]["servedModelName"]  # type: ignore[attr-defined]
    assert kube.served_name(model) == "from-spec"
    del model["spec"]
    assert kube.served_name(model) == "chat"
    table = RoutingTable()
    kube.apply_event(table, TargetKind.MODEL, "ADDED", model)
    assert table.model_by_served_name("ns", "chat") == "chat"
    route = table.resolve(TargetKey(TargetKind.MODEL, "ns", "chat"))
    assert route is not None
    assert route.forwardable
    kube.apply_event(table, TargetKind.MODEL, "DELETED", model)
    assert table.model_by_served_name("ns", "chat") is None


@pytest.mark.parametrize("kind", [TargetKind.SANDBOX, TargetKind.SESSION, TargetKind.MODEL])
def test_an_object_being_deleted_is_terminating_and_unroutable(kind: TargetKind) -> None:
    obj = sandbox("x", phase="Running", conditions=READY, podIP="10.0.0.7", port=8080)
    obj["metadata"]["deletionTimestamp"] = "2026-12-04T00:00:00Z"  # type: ignore[index]
    table = RoutingTable()
    kube.apply_event(table, kind, "MODIFIED", obj)
    route = table.resolve(TargetKey(kind, "ns", "x"))
    assert route is not None
    assert route.phase == "Terminating"
    assert route.unroutable


def test_model_renewals_carry_the_queued_count() -> None:
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    snapshot = ActivitySnapshot(1, now.timestamp(), queued=3)
    patch = kube.renewal_patch(snapshot, "router-0", now, 5.0, with_queue=True)
    annotations = patch["metadata"]["annotations"]
    assert annotations[kube.QUEUED_ANNOTATION] == "3"
    assert annotations[kube.IN_FLIGHT_ANNOTATION] == "1"
    assert (
        kube.QUEUED_ANNOTATION
        not in kube.renewal_patch(snapshot, "r", now, 5.0)["metadata"]["annotations"]
    )
    key = TargetKey(TargetKind.MODEL, "ns", "chat")
    assert kube.lease_name(key) == "kocoon-activity-modeldeployment-chat"


def test_the_router_imports_nothing_of_the_operator_but_the_contract() -> None:
    import ast
    from pathlib import Path

    import kocoon.router

    imported: set[str] = set()
    for source in Path(kocoon.router.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                imported.update(n for n in names if n.startswith("kocoon"))
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.startswith("kocoon"))
    outside = {
        name
        for name in imported
        if not name.startswith(("kocoon.router", "kocoon.contract"))
        and name not in {"kocoon", "kocoon.contract"}
    }
    assert outside == set()
    assert "kocoon.contract" in imported
