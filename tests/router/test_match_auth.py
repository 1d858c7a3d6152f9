from __future__ import annotations

import pytest

from kocoon.router.auth import AuthFailure, bearer_token, check_bearer, hash_token
from kocoon.router.match import match_request
from kocoon.router.table import TargetKey, TargetKind

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("path", "kind", "forward"),
    [
        ("/sessions/ns/s1/v1/chat?x", TargetKind.SESSION, "/v1/chat?x"),
        ("/sessions/ns/s1", TargetKind.SESSION, "/"),
        ("/sessions/ns/s1/", TargetKind.SESSION, "/"),
        ("/sandboxes/ns/box/a/b", TargetKind.SANDBOX, "/a/b"),
        ("/models/ns/llama/v1/completions", TargetKind.MODEL, "/v1/completions"),
    ],
)
def test_path_form(path: str, kind: TargetKind, forward: str) -> None:
    match = match_request(path, "router.local", "kocoon.example")
    assert match is not None
    assert match.key.kind is kind
    assert match.key.namespace == "ns"
    assert match.forward_path == forward


@pytest.mark.parametrize(
    "path", ["/", "/sessions", "/sessions/ns", "/other/ns/n/x", "/sessions/NS/n", "/sessions/n_s/x"]
)
def test_paths_that_address_nothing(path: str) -> None:
    assert match_request(path, None, None) is None


def test_host_form_wins_under_the_domain_and_keeps_the_path() -> None:
    match = match_request("/sessions/a/b/c", "S1.Team-A.kocoon.example:443", "kocoon.example")
    assert match is not None
    assert match.key == TargetKey(TargetKind.SESSION, "team-a", "s1")
    assert match.forward_path == "/sessions/a/b/c"
    assert match.prefix == ""


@pytest.mark.parametrize("host", ["kocoon.example", "a.b.c.kocoon.example", "x.kocoon.example"])
def test_hosts_that_are_not_name_dot_namespace_fall_back_to_the_path(host: str) -> None:
    match = match_request("/sandboxes/ns/box/", host, "kocoon.example")
    assert match is not None
    assert match.key.kind is TargetKind.SANDBOX


def test_bearer_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_check_bearer_accepts_any_configured_token_only() -> None:
    accepted = [hash_token("current"), hash_token("previous")]
    assert check_bearer("Bearer current", accepted) is None
    assert check_bearer("Bearer previous", accepted) is None
    assert check_bearer("Bearer other", accepted) is AuthFailure.WRONG
    assert check_bearer(None, accepted) is AuthFailure.MISSING
    assert check_bearer("Token current", accepted) is AuthFailure.MALFORMED
    assert check_bearer("Bearer current", []) is AuthFailure.NO_TOKEN_CONFIGURED
