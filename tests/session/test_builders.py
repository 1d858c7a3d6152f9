"""What a session owns, built as data: Sandbox, token Secret, activity Lease, Lease patches."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from kocoon.api.sandbox import Usage
from kocoon.api.session import AgentSessionSpec
from kocoon.builders import names, token
from kocoon.builders import session as build
from kocoon.controllers import session as controller

pytestmark = pytest.mark.unit

OWNER = build.session_identity("s1", "team-a", "uid-1")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def spec(**fields: Any) -> AgentSessionSpec:
    template = fields.pop("sandboxTemplate", None) or {
        "template": {"image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]},
        "network": {"exposedPorts": ["http"]},
        "workspace": {"size": "1Gi"},
        "idleTimeout": "1h",
        "hibernation": "memory",
        "operatingMode": "Running",
    }
    return AgentSessionSpec.model_validate(
        {"owner": {"user": "alice"}, "sandboxTemplate": template, **fields}
    )


def test_session_policies_override_the_template() -> None:
    composed = build.sandbox_spec(
        spec(idleTimeout="10m", hibernation="filesystem", operatingMode="Auto")
    )
    assert str(composed.idle_timeout) == "10m0s"
    assert composed.hibernation == "filesystem"
    assert composed.operating_mode == "Auto"


def test_the_template_applies_where_the_session_says_nothing() -> None:
    composed = build.sandbox_spec(spec())
    assert str(composed.idle_timeout) == "1h0m0s"
    assert composed.hibernation == "memory"
    assert composed.operating_mode == "Auto"  # the session's default intent wins


def test_an_expired_session_keeps_its_sandbox_asleep() -> None:
    assert build.sandbox_spec(spec(), hibernate=True).operating_mode == "Hibernated"


def test_an_impossible_combination_names_the_fields() -> None:
    template = {"template": {"image": "busybox"}}
    with pytest.raises(build.TemplateError, match="workspace"):
        build.sandbox_spec(spec(sandboxTemplate=template, hibernation="filesystem"))


def test_the_sandbox_is_named_like_the_session_and_controlled_by_it() -> None:
    manifest = build.sandbox(OWNER, build.sandbox_spec(spec()))
    metadata = manifest["metadata"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("kocoon.io/v1alpha1", "Sandbox")
    assert (metadata["name"], metadata["namespace"]) == ("s1", "team-a")
    assert metadata["labels"][build.SESSION_LABEL] == "s1"
    [ref] = metadata["ownerReferences"]
    assert ref == {
        "apiVersion": "kocoon.io/v1alpha1",
        "kind": "AgentSession",
        "name": "s1",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert manifest["spec"]["template"]["image"] == "busybox"
    assert manifest["spec"]["workspace"] == {"size": "1Gi", "mountPath": "/workspace"}


def test_the_session_owns_expiry_so_shutdown_time_stays_off_its_sandbox() -> None:
    template = {
        "template": {"image": "busybox"},
        "workspace": {"size": "1Gi"},
        "shutdownTime": "2026-11-24T12:00:00Z",
        "shutdownPolicy": "Delete",
    }
    composed = build.sandbox_spec(spec(sandboxTemplate=template))
    assert composed.shutdown_time is None
    manifest = build.sandbox(OWNER, composed)
    assert "shutdownTime" not in manifest["spec"]
    assert manifest["spec"].get("shutdownPolicy", "Retain") == "Retain"


def test_the_release_request_is_an_annotation_the_apply_owns() -> None:
    composed = build.sandbox_spec(spec())
    asked = build.sandbox(OWNER, composed, release_checkpoint="s1-0123")
    assert asked["metadata"]["annotations"] == {"kocoon.io/release-checkpoint": "s1-0123"}
    assert "annotations" not in build.sandbox(OWNER, composed)["metadata"]
    assert "status" not in asked  # the Sandbox controller writes the Sandbox's status


def test_a_hand_edit_of_the_sandbox_is_drift_and_server_defaults_are_not() -> None:
    desired = build.sandbox(OWNER, build.sandbox_spec(spec()))
    live = json.loads(json.dumps(desired))
    assert not build.sandbox_drifted(desired, live)
    # What the API server adds beside the session's fields is no drift.
    live["metadata"].update(uid="x", resourceVersion="7", annotations={"other": "1"})
    live["spec"]["template"]["ports"][0]["protocol"] = "TCP"
    live["spec"]["shutdownPolicy"] = "Retain"
    live["status"] = {"phase": "Running"}
    assert not build.sandbox_drifted(desired, live)
    edited = json.loads(json.dumps(live))
    edited["spec"]["template"]["image"] = "nginx"
    assert build.sandbox_drifted(desired, edited)
    shorter = json.loads(json.dumps(live))
    shorter["spec"]["idleTimeout"] = "1m"
    assert build.sandbox_drifted(desired, shorter)
    released = build.sandbox(OWNER, build.sandbox_spec(spec()), release_checkpoint="c1")
    assert build.sandbox_drifted(released, live)
    assert build.sandbox_drifted(desired, None)


def test_the_token_secret_is_what_the_router_watches() -> None:
    secret = build.token_secret(OWNER, "tok", rotation="r1")
    metadata = secret["metadata"]
    assert metadata["name"] == "s1-token"
    assert metadata["labels"][token.TOKEN_LABEL] == "true"
    assert metadata["annotations"] == {build.TOKEN_ROTATION_ANNOTATION: "r1"}
    assert base64.b64decode(secret["data"]["token"]) == b"tok"
    assert token.PREVIOUS_TOKEN_KEY not in secret["data"]
    assert metadata["ownerReferences"][0]["kind"] == "AgentSession"
    assert "annotations" not in build.token_secret(OWNER, "tok", rotation=None)["metadata"]


def test_rotation_keeps_the_old_token_as_previous() -> None:
    patch = build.token_rotation_patch("new", "old", "r2", NOW)
    assert base64.b64decode(patch["data"][token.TOKEN_KEY]) == b"new"
    assert base64.b64decode(patch["data"][token.PREVIOUS_TOKEN_KEY]) == b"old"
    annotations = patch["metadata"]["annotations"]
    assert annotations[build.TOKEN_ROTATION_ANNOTATION] == "r2"
    assert annotations[build.TOKEN_ROTATED_AT_ANNOTATION] == "2026-11-23T12:00:00.000000Z"
    dropped = build.drop_previous_token_patch()
    assert dropped["data"] == {token.PREVIOUS_TOKEN_KEY: None}


def test_the_activity_lease_is_the_one_the_router_renews() -> None:
    lease = build.activity_lease(OWNER)
    assert lease["metadata"]["name"] == "kocoon-activity-agentsession-s1"
    labels = lease["metadata"]["labels"]
    assert labels[names.TARGET_KIND_LABEL] == "agentsession"
    assert labels[names.TARGET_NAME_LABEL] == "s1"
    assert "spec" not in lease  # the router owns it


def test_lease_patches_carry_wake_and_activity() -> None:
    assert build.wake_patch(NOW)["metadata"]["annotations"] == {
        names.WAKE_REQUESTED_ANNOTATION: "2026-11-23T12:00:00.000000Z"
    }
    assert build.clear_wake_patch()["metadata"]["annotations"] == {
        names.WAKE_REQUESTED_ANNOTATION: None
    }
    assert build.activity_patch(NOW, 3)["metadata"]["annotations"] == {
        names.LAST_REQUEST_ANNOTATION: "2026-11-23T12:00:00.000000Z",
        names.IN_FLIGHT_ANNOTATION: "3",
    }


def test_endpoints() -> None:
    assert build.endpoint("team-a", "s1") == "/sessions/team-a/s1/"
    assert build.host_endpoint("team-a", "s1", "sessions.example.com") == (
        "s1.team-a.sessions.example.com"
    )
    assert build.host_endpoint("team-a", "s.1", "sessions.example.com") is None
    assert build.host_endpoint("team-a", "s1", "") is None


# --- the controller's pure readers ------------------------------------------------------------


def test_sandbox_view_reads_ownership_phase_and_usage() -> None:
    body = {
        "metadata": {
            "uid": "sbx-uid",
            "ownerReferences": [{"uid": "uid-1", "controller": True}],
        },
        "status": {
            "phase": "Hibernated",
            "phaseSince": "2026-11-23T11:00:00Z",
            "checkpoint": {"id": "c1"},
            "usage": {"activeSeconds": 3.5},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "SandboxHibernated",
                    "lastTransitionTime": "2026-11-23T11:00:00Z",
                }
            ],
        },
    }
    view = controller.sandbox_view(body, "uid-1")
    assert view is not None
    assert view.owned
    assert view.has_checkpoint
    assert not view.deleting
    assert view.phase is not None
    assert view.phase.value == "Hibernated"
    assert view.ready is not None
    assert view.ready.reason == "SandboxHibernated"
    assert view.usage is not None
    assert view.usage.active_seconds == 3.5
    stranger = controller.sandbox_view(body, "someone-else")
    assert stranger is not None
    assert not stranger.owned
    assert controller.sandbox_view(None, "uid-1") is None


def test_token_view_reads_the_rotation_state() -> None:
    secret = {
        "metadata": {
            "annotations": {
                build.TOKEN_ROTATION_ANNOTATION: "r1",
                build.TOKEN_ROTATED_AT_ANNOTATION: "2026-11-23T12:00:00.000000Z",
            }
        },
        "data": {"token": "eA==", "previousToken": "eQ=="},
    }
    view = controller.token_view(secret)
    assert view is not None
    assert view.has_previous
    assert view.rotation == "r1"
    assert view.rotated_at == NOW
    assert controller.token_view(None) is None


def test_the_usage_ledger_round_trips_through_annotations() -> None:
    from kocoon.session_lifecycle import UsageLedger

    ledger = UsageLedger(retired=Usage(active_seconds=12.5, wake_count=2), sandbox_uid="x")
    annotations = {k: v for k, v in controller.ledger_annotations(ledger).items() if v}
    assert controller.usage_ledger(annotations) == ledger
    assert controller.usage_ledger({controller.USAGE_RETIRED_ANNOTATION: "{bad"}).retired == Usage()


def test_claiming_a_token_secret_sets_the_sessions_labels_and_owner_only() -> None:
    patch = build.token_claim_patch(OWNER)
    assert set(patch) == {"metadata"}  # the token itself is kept
    assert patch["metadata"]["labels"][build.SESSION_LABEL] == "s1"
    assert patch["metadata"]["labels"][token.TOKEN_LABEL] == "true"
    [ref] = patch["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("AgentSession", "uid-1", True)
    secret = {"metadata": {"labels": patch["metadata"]["labels"], **patch["metadata"]}}
    claimed = controller.token_view(secret, OWNER)
    assert claimed is not None
    assert claimed.owned
    by_sandbox = {"metadata": {"ownerReferences": [{"kind": "Sandbox", "uid": "x"}]}}
    view = controller.token_view(by_sandbox, OWNER)
    assert view is not None
    assert not view.owned


def test_an_expiry_set_on_the_sandbox_by_hand_is_removed() -> None:
    desired = build.sandbox(OWNER, build.sandbox_spec(spec()))
    assert build.session_owned_patch(desired) is None
    assert build.session_owned_patch(None) is None
    edited = json.loads(json.dumps(desired))
    edited["spec"]["shutdownTime"] = "2030-01-01T00:00:00Z"
    assert build.session_owned_patch(edited) == {"spec": {"shutdownTime": None}}
