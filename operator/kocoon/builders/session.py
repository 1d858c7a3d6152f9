"""AgentSession → what it owns: its Sandbox, its token Secret and its activity Lease. Pure.

The session's Sandbox is named like the session, so the Sandbox's own token Secret
(`<name>-token`) is the session's: one token opens the session and its Sandbox, and no other.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kocoon import contract
from kocoon.api.sandbox import SandboxSpec
from kocoon.api.session import AgentSessionSpec
from kocoon.builders import names, token
from kocoon.builders.context import Identity
from kocoon.kube.resources import API_VERSION

SESSION_LABEL = "kocoon.io/session"
SESSION_KIND = "AgentSession"
SESSION_TARGET_KIND = "agentsession"
SESSION_ACTIVITY_LEASE_PREFIX = "kocoon-activity-agentsession-"

# Written by users (an action, not spec): a new value asks for a new token.
ROTATE_TOKEN_ANNOTATION = "kocoon.io/rotate-token"
# On the token Secret: the rotation request last carried out, and when.
TOKEN_ROTATION_ANNOTATION = "kocoon.io/token-rotation"
TOKEN_ROTATED_AT_ANNOTATION = "kocoon.io/token-rotated-at"
# On the Sandbox: the checkpoint the session asks the Sandbox controller to release (the
# session's retention is over); the Sandbox controller releases it and writes its status.
RELEASE_CHECKPOINT_ANNOTATION = contract.RELEASE_CHECKPOINT_ANNOTATION
# Template fields the session does not pass on: the session owns expiry (maxLifetime and the
# template's shutdownTime end the session, and retention keeps the Sandbox's state).
SESSION_OWNED_FIELDS = ("shutdownTime", "shutdownPolicy")


def session_identity(name: str, namespace: str, uid: str) -> Identity:
    return Identity(name=name, namespace=namespace, uid=uid, kind=SESSION_KIND)


def sandbox_name(session: str) -> str:
    return session


def token_secret_name(session: str) -> str:
    return token.token_secret_name(session)


def activity_lease_name(session: str) -> str:
    return f"{SESSION_ACTIVITY_LEASE_PREFIX}{session}"


def endpoint(namespace: str, name: str) -> str:
    """The session's stable URL path through the router."""
    return f"/sessions/{namespace}/{name}/"


def host_endpoint(namespace: str, name: str, domain: str | None) -> str | None:
    """The host form `{name}.{namespace}.{domain}`, where the name can be a host label."""
    if not domain or "." in name:
        return None
    return f"{name}.{namespace}.{domain}"


def labels(session: str, component: str) -> dict[str, str]:
    return {
        SESSION_LABEL: session,
        names.COMPONENT_LABEL: component,
        names.MANAGED_BY_LABEL: names.MANAGED_BY,
    }


def _owner_references(owner: Identity) -> list[dict[str, Any]]:
    return [names.owner_reference(owner.kind, owner.name, owner.uid, owner.api_version)]


class TemplateError(ValueError):
    """The session's policies and template do not make a valid Sandbox; names the field."""


def sandbox_spec(spec: AgentSessionSpec, *, hibernate: bool = False) -> SandboxSpec:
    """The template with the session's policies applied; `hibernate` keeps it asleep.

    Validated as a Sandbox, so that a combination the Sandbox would reject (e.g. filesystem
    hibernation without a workspace) is reported against the session's fields. The
    template's shutdownTime stays with the session, which expires by it.
    """
    wire = spec.sandbox_template.to_wire()
    for key in SESSION_OWNED_FIELDS:
        wire.pop(key, None)
    wire["operatingMode"] = "Hibernated" if hibernate else spec.operating_mode
    if spec.idle_timeout is not None:
        wire["idleTimeout"] = str(spec.idle_timeout)
    if spec.hibernation is not None:
        wire["hibernation"] = spec.hibernation
    try:
        return SandboxSpec.model_validate(wire)
    except ValidationError as error:
        details = "; ".join(
            f"spec.sandboxTemplate.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            if e["loc"]
            else f"spec: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise TemplateError(details) from None


def sandbox(
    owner: Identity, spec: SandboxSpec, *, release_checkpoint: str | None = None
) -> dict[str, Any]:
    """The session's Sandbox, for server-side apply: the session is its controller.

    `release_checkpoint` asks the Sandbox controller to release that checkpoint; left out, the
    apply removes the annotation (the session owns it).
    """
    metadata: dict[str, Any] = {
        "name": sandbox_name(owner.name),
        "namespace": owner.namespace,
        "labels": labels(owner.name, "sandbox"),
        "ownerReferences": _owner_references(owner),
    }
    if release_checkpoint is not None:
        metadata["annotations"] = {RELEASE_CHECKPOINT_ANNOTATION: release_checkpoint}
    return {
        "apiVersion": API_VERSION,
        "kind": "Sandbox",
        "metadata": metadata,
        "spec": spec.to_wire(),
    }


def drifted(desired: Any, live: Any) -> bool:
    """Whether the live object lost something the desired manifest sets: a field missing or
    with another value (fields the API server defaults beside them do not count)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return True
        return any(drifted(value, live.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return True
        return any(drifted(d, v) for d, v in zip(desired, live, strict=True))
    return bool(desired != live)


def session_owned_patch(live: dict[str, Any] | None) -> dict[str, Any] | None:
    """Merge patch removing expiry fields set on the session's Sandbox by hand (the session
    owns expiry; apply cannot remove a field another writer set); None when there are none."""
    spec = (live or {}).get("spec") or {}
    if spec.get("shutdownTime") is None:
        return None
    return {"spec": {"shutdownTime": None}}


def sandbox_drifted(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """Whether the session's Sandbox must be applied: missing, its spec edited away from the
    session's, its labels or owner changed, or the release annotation not as wanted."""
    if live is None:
        return True
    want = desired["metadata"]
    have = live.get("metadata") or {}
    wanted_release = (want.get("annotations") or {}).get(RELEASE_CHECKPOINT_ANNOTATION)
    live_release = (have.get("annotations") or {}).get(RELEASE_CHECKPOINT_ANNOTATION)
    return (
        wanted_release != live_release
        or drifted(want["labels"], have.get("labels") or {})
        or drifted(want["ownerReferences"], have.get("ownerReferences") or [])
        or drifted(desired["spec"], live.get("spec") or {})
    )


def _encode(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def microtime(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def token_secret(owner: Identity, current: str, rotation: str | None) -> dict[str, Any]:
    """The session's token Secret as first created; `rotation` is the request it satisfies."""
    metadata: dict[str, Any] = {
        "name": token_secret_name(owner.name),
        "namespace": owner.namespace,
        "labels": {**labels(owner.name, "token"), token.TOKEN_LABEL: "true"},
        "ownerReferences": _owner_references(owner),
    }
    if rotation is not None:
        metadata["annotations"] = {TOKEN_ROTATION_ANNOTATION: rotation}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "data": {token.TOKEN_KEY: _encode(current)},
    }


def token_claim_patch(owner: Identity) -> dict[str, Any]:
    """Merge patch making an existing token Secret the session's (its token unchanged)."""
    return {
        "metadata": {
            "labels": {**labels(owner.name, "token"), token.TOKEN_LABEL: "true"},
            "ownerReferences": _owner_references(owner),
        }
    }


def token_rotation_patch(new: str, previous: str, rotation: str, now: datetime) -> dict[str, Any]:
    """Merge patch: a new token; the old one stays valid as previousToken for a grace period."""
    return {
        "metadata": {
            "annotations": {
                TOKEN_ROTATION_ANNOTATION: rotation,
                TOKEN_ROTATED_AT_ANNOTATION: microtime(now),
            }
        },
        "data": {token.TOKEN_KEY: _encode(new), token.PREVIOUS_TOKEN_KEY: _encode(previous)},
    }


def drop_previous_token_patch() -> dict[str, Any]:
    return {
        "metadata": {"annotations": {TOKEN_ROTATED_AT_ANNOTATION: None}},
        "data": {token.PREVIOUS_TOKEN_KEY: None},
    }


def activity_lease(owner: Identity) -> dict[str, Any]:
    """The session's activity Lease, identity only: the router owns its spec and activity."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": activity_lease_name(owner.name),
            "namespace": owner.namespace,
            "labels": {
                **labels(owner.name, "activity"),
                names.TARGET_KIND_LABEL: SESSION_TARGET_KIND,
                names.TARGET_NAME_LABEL: owner.name,
            },
            "ownerReferences": _owner_references(owner),
        },
    }


def wake_patch(requested_at: datetime) -> dict[str, Any]:
    """Merge patch for the Sandbox's Lease carrying the session's wake request."""
    return {"metadata": {"annotations": {names.WAKE_REQUESTED_ANNOTATION: microtime(requested_at)}}}


def clear_wake_patch() -> dict[str, Any]:
    return {"metadata": {"annotations": {names.WAKE_REQUESTED_ANNOTATION: None}}}


def activity_patch(last_request: datetime, in_flight: int) -> dict[str, Any]:
    """Merge patch for the Sandbox's Lease carrying the session's activity."""
    return {
        "metadata": {
            "annotations": {
                names.LAST_REQUEST_ANNOTATION: microtime(last_request),
                names.IN_FLIGHT_ANNOTATION: str(in_flight),
            }
        }
    }
