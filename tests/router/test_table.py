from __future__ import annotations

import pytest

from kocoon.router.auth import hash_token
from kocoon.router.table import BackendView, RoutingTable, SessionView, TargetKey, TargetKind

pytestmark = pytest.mark.unit

SESSION = TargetKey(TargetKind.SESSION, "ns", "s1")
SANDBOX = TargetKey(TargetKind.SANDBOX, "ns", "s1-sbx")


def test_session_route_is_composed_from_its_sandbox_and_secret() -> None:
    table = RoutingTable()
    table.upsert_secret("ns", "tok", [hash_token("a")])
    table.upsert_session("ns", "s1", SessionView("Running", "s1-sbx", "tok"))
    route = table.resolve(SESSION)
    assert route is not None
    assert not route.forwardable  # no sandbox known yet
    table.upsert_backend(SANDBOX, BackendView("Running", True, ("10.0.0.1:8080",)))
    route = table.resolve(SESSION)
    assert route is not None
    assert route.forwardable
    assert route.endpoints == ("10.0.0.1:8080",)
    assert route.token_hashes == {hash_token("a")}


def test_hibernated_session_without_sandbox_is_known_but_not_forwardable() -> None:
    table = RoutingTable()
    table.upsert_session("ns", "s1", SessionView("Hibernated", None, "tok"))
    route = table.resolve(SESSION)
    assert route is not None
    assert (route.phase, route.ready, route.endpoints) == ("Hibernated", False, ())


def test_unknown_and_deleted_targets_resolve_to_none() -> None:
    table = RoutingTable()
    assert table.resolve(SANDBOX) is None
    table.upsert_backend(SANDBOX, BackendView("Running", True, ("h:1",)))
    table.delete_backend(SANDBOX)
    assert table.resolve(SANDBOX) is None


def test_target_without_secret_has_no_tokens() -> None:
    table = RoutingTable()
    table.upsert_backend(SANDBOX, BackendView("Running", True, ("h:1",), "missing"))
    route = table.resolve(SANDBOX)
    assert route is not None
    assert route.token_hashes == frozenset()


@pytest.mark.parametrize("phase", ["Failed", "Terminating", "Expired"])
def test_phases_that_never_come_back_are_unroutable(phase: str) -> None:
    table = RoutingTable()
    table.upsert_backend(SANDBOX, BackendView(phase, False, ()))
    route = table.resolve(SANDBOX)
    assert route is not None
    assert route.unroutable


def test_a_hibernated_target_is_routable_and_held() -> None:
    table = RoutingTable()
    table.upsert_backend(SANDBOX, BackendView("Hibernated", False, ()))
    route = table.resolve(SANDBOX)
    assert route is not None
    assert not route.unroutable


def test_listeners_hear_every_change_and_endpoints_rotate() -> None:
    table = RoutingTable()
    heard: list[int] = []
    table.listeners.append(lambda: heard.append(1))
    table.upsert_backend(SANDBOX, BackendView("Running", True, ("a:1", "b:2")))
    table.upsert_secret("ns", "tok", [])
    table.delete_secret("ns", "tok")
    table.delete_secret("ns", "tok")  # nothing to delete: no event
    assert len(heard) == 3
    route = table.resolve(SANDBOX)
    assert route is not None
    assert {table.pick_endpoint(route) for _ in range(4)} == {"a:1", "b:2"}


def test_sessions_are_not_backends() -> None:
    with pytest.raises(ValueError, match="upsert_session"):
        RoutingTable().upsert_backend(SESSION, BackendView())


def test_callers_follow_sessions_secrets_and_api_keys() -> None:
    from kocoon.router.table import ApiKeyView

    table = RoutingTable()
    table.upsert_session("ns", "s1", SessionView("Running", "s1-sbx", "tok", frozenset({"m"})))
    assert table.callers.identify("Bearer a") == "wrong"  # no Secret yet
    table.upsert_secret("ns", "tok", [hash_token("a")])
    caller = table.callers.identify("Bearer a")
    assert not isinstance(caller, str)
    assert (caller.namespace, caller.name, caller.model_names) == ("ns", "s1", {"m"})
    table.upsert_secret("ns", "tok", [hash_token("b")])  # rotated without a previous token
    assert table.callers.identify("Bearer a") == "wrong"
    assert table.callers.identify("Basic x") == "malformed"
    assert table.callers.identify(None) == "missing"
    # the same key in two Secrets: when the first goes, the second still opens
    table.upsert_api_key("ns", "k1", ApiKeyView(frozenset({hash_token("k")}), None))
    table.upsert_api_key("other", "k2", ApiKeyView(frozenset({hash_token("k")}), None))
    first = table.callers.identify("Bearer k")
    assert not isinstance(first, str)
    assert first.namespace == "ns"
    table.delete_api_key("ns", "k1")
    second = table.callers.identify("Bearer k")
    assert not isinstance(second, str)
    assert second.namespace == "other"
    table.delete_api_key("other", "k2")
    assert table.callers.identify("Bearer k") == "wrong"
    table.delete_session("ns", "s1")
    assert table.callers.identify("Bearer b") == "wrong"
