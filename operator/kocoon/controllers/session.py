"""The AgentSession controller: gather what is, ask the session life cycle what next, do it.

Every trigger — a change to the session, to its Sandbox or its activity Lease, and a
periodic timer — runs the same level-based `reconcile`, one at a time per session. The
session's children (Sandbox, token Secret, activity Lease) carry owner references to it, so
deleting the session releases them by garbage collection; the Sandbox's own finalizer
releases its checkpoint.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from kocoon import session_lifecycle as sl
from kocoon.api.common import LocalObjectReference, SecretKeyReference
from kocoon.api.conditions import ConditionType, Reason
from kocoon.api.sandbox import SandboxStatus, Usage
from kocoon.api.session import AgentSession, AgentSessionStatus
from kocoon.builders import names, token
from kocoon.builders import session as build
from kocoon.builders.context import Identity
from kocoon.controllers import common, failpoints, observe
from kocoon.controllers.context import OperatorContext, current, reconcile_interval
from kocoon.kube import client, events
from kocoon.kube.resources import (
    AGENT_SESSION,
    GROUP,
    LEASE,
    MODEL_DEPLOYMENT,
    SANDBOX,
    SECRET,
    VERSION,
)
from kocoon.status import ConditionUpdate, merge_conditions, status_patch

log = logging.getLogger(__name__)
KIND = AGENT_SESSION.kind

# The operator's own annotations on the session: the usage of sandboxes that are gone, and
# the Sandbox whose usage the status total holds on top of it (see UsageLedger).
USAGE_RETIRED_ANNOTATION = "kocoon.io/usage-retired"
USAGE_SANDBOX_ANNOTATION = "kocoon.io/usage-sandbox-uid"


def _now() -> datetime:
    return datetime.now(UTC)


# --- pure readers ----------------------------------------------------------------------------


def _condition(status: SandboxStatus, kind: ConditionType) -> sl.ConditionView | None:
    for condition in status.conditions:
        if condition.type == kind:
            return sl.ConditionView(condition.status, condition.reason, condition.message)
    return None


def sandbox_view(body: dict[str, Any] | None, session_uid: str) -> sl.SandboxView | None:
    if body is None:
        return None
    metadata = body.get("metadata", {})
    owned = any(
        ref.get("uid") == session_uid and ref.get("controller")
        for ref in metadata.get("ownerReferences") or []
    )
    try:
        status = SandboxStatus.model_validate(body.get("status") or {})
    except ValidationError:
        status = SandboxStatus()
    return sl.SandboxView(
        uid=str(metadata.get("uid", "")),
        owned=owned,
        phase=status.phase,
        phase_since=status.phase_since,
        deleting=metadata.get("deletionTimestamp") is not None,
        ready=_condition(status, ConditionType.READY),
        hibernated=_condition(status, ConditionType.HIBERNATED),
        has_checkpoint=status.checkpoint is not None,
        usage=status.usage,
        last_activity=status.last_activity_time,
        checkpoint_id=status.checkpoint.id if status.checkpoint is not None else None,
        release_requested=(metadata.get("annotations") or {}).get(
            build.RELEASE_CHECKPOINT_ANNOTATION
        ),
    )


def token_view(secret: dict[str, Any] | None) -> sl.TokenView | None:
    if secret is None:
        return None
    annotations = secret.get("metadata", {}).get("annotations") or {}
    return sl.TokenView(
        has_previous=bool((secret.get("data") or {}).get(token.PREVIOUS_TOKEN_KEY)),
        rotation=annotations.get(build.TOKEN_ROTATION_ANNOTATION),
        rotated_at=observe.parse_time(annotations.get(build.TOKEN_ROTATED_AT_ANNOTATION)),
    )


def usage_ledger(annotations: Mapping[str, str]) -> sl.UsageLedger:
    raw = annotations.get(USAGE_RETIRED_ANNOTATION)
    try:
        retired = Usage.model_validate(json.loads(raw)) if raw else Usage()
    except (ValueError, ValidationError):
        retired = Usage()  # hand-edited beyond repair: start the retired sum again
    return sl.UsageLedger(retired=retired, sandbox_uid=annotations.get(USAGE_SANDBOX_ANNOTATION))


def ledger_annotations(ledger: sl.UsageLedger) -> dict[str, str | None]:
    return {
        USAGE_RETIRED_ANNOTATION: json.dumps(ledger.retired.to_wire(), sort_keys=True),
        USAGE_SANDBOX_ANNOTATION: ledger.sandbox_uid,
    }


def owns(obj: dict[str, Any] | None, uid: str) -> bool:
    refs = (obj or {}).get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def _decode(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode((secret.get("data") or {}).get(key, "")).decode()


# --- reconcile -------------------------------------------------------------------------------


@dataclass
class Seen:
    """Everything one reconcile read, for the actions and the status."""

    body: dict[str, Any]
    session: AgentSession
    owner: Identity
    sandbox: dict[str, Any] | None
    secret: dict[str, Any] | None
    lease: dict[str, Any] | None
    observed: sl.Observed


async def reconcile(ctx: OperatorContext, namespace: str, name: str) -> None:
    await common.reconcile_locked(ctx, AGENT_SESSION, namespace, name, _reconcile)


async def _reconcile(ctx: OperatorContext, body: dict[str, Any]) -> None:
    try:
        session = AgentSession.model_validate(body)
    except ValidationError as error:
        await common.report_invalid(ctx, AGENT_SESSION, body, error)
        return
    seen = await _observe(ctx, body, session)
    decision = sl.decide(seen.observed)
    status = (session.status or AgentSessionStatus()).model_copy(deep=True)
    for action in decision.actions:
        await _act(ctx, action, seen, decision)
        failpoints.hit(f"session:after:{action.value}")
    apply_error = await _converge_sandbox(ctx, decision, seen)
    if seen.lease is None or not owns(seen.lease, seen.owner.uid):
        await client.apply(ctx.api, build.activity_lease(seen.owner))
    await _write_status(ctx, seen, status, decision, apply_error)


async def _observe(ctx: OperatorContext, body: dict[str, Any], session: AgentSession) -> Seen:
    metadata = body["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    owner = build.session_identity(name, namespace, metadata["uid"])
    now = _now()
    sandbox = await client.get(ctx.api, SANDBOX, namespace, build.sandbox_name(name))
    secret = await client.get(ctx.api, SECRET, namespace, build.token_secret_name(name))
    lease = await client.get(ctx.api, LEASE, namespace, build.activity_lease_name(name))
    sandbox_lease = (
        await client.get(ctx.api, LEASE, namespace, names.activity_lease_name(name))
        if sandbox is not None
        else None
    )
    models_present = frozenset(
        [
            ref.name
            for ref in session.spec.models
            if await client.get(ctx.api, MODEL_DEPLOYMENT, namespace, ref.name) is not None
        ]
    )
    template_error = None
    try:
        build.sandbox_spec(session.spec)
    except build.TemplateError as error:
        template_error = str(error)
    status = session.status or AgentSessionStatus()
    annotations = metadata.get("annotations") or {}
    observed = sl.Observed(
        name=name,
        spec=session.spec,
        generation=int(metadata.get("generation", 0)),
        created=observe.parse_time(metadata.get("creationTimestamp")) or now,
        now=now,
        phase=status.phase,
        start_time=status.start_time,
        sandbox=sandbox_view(sandbox, owner.uid),
        token=token_view(secret),
        rotate_request=annotations.get(build.ROTATE_TOKEN_ANNOTATION),
        activity=observe.activity(lease),
        sandbox_activity=observe.activity(sandbox_lease),
        template_error=template_error,
        models_present=models_present,
    )
    return Seen(body, session, owner, sandbox, secret, lease, observed)


async def _act(ctx: OperatorContext, action: sl.Action, seen: Seen, decision: sl.Decision) -> None:
    owner, observed = seen.owner, seen.observed
    sandbox_lease = names.activity_lease_name(build.sandbox_name(owner.name))
    if action is sl.Action.CREATE_TOKEN:
        manifest = build.token_secret(owner, token.new_token(), observed.rotate_request)
        try:
            await client.request(ctx.api, "POST", SECRET.path(owner.namespace), body=manifest)
        except client.ApiError as error:
            if error.status != 409:  # 409: created meanwhile; it is never overwritten
                raise
    elif action is sl.Action.ROTATE_TOKEN and seen.secret is not None:
        assert observed.rotate_request is not None
        patch = build.token_rotation_patch(
            token.new_token(),
            _decode(seen.secret, token.TOKEN_KEY),
            observed.rotate_request,
            observed.now,
        )
        await client.merge_patch(
            ctx.api, SECRET, owner.namespace, build.token_secret_name(owner.name), patch
        )
    elif action is sl.Action.DROP_PREVIOUS_TOKEN:
        await client.merge_patch(
            ctx.api,
            SECRET,
            owner.namespace,
            build.token_secret_name(owner.name),
            build.drop_previous_token_patch(),
        )
    elif action is sl.Action.FORWARD_WAKE and observed.activity.wake_requested_at is not None:
        patch = build.wake_patch(observed.activity.wake_requested_at)
        await _patch_lease(ctx, owner.namespace, sandbox_lease, patch)
    elif action is sl.Action.MIRROR_ACTIVITY and observed.activity.last_request is not None:
        patch = build.activity_patch(observed.activity.last_request, decision.mirror_in_flight)
        await _patch_lease(ctx, owner.namespace, sandbox_lease, patch)
    elif action is sl.Action.CLEAR_WAKE_REQUEST:
        await _patch_lease(
            ctx, owner.namespace, build.activity_lease_name(owner.name), build.clear_wake_patch()
        )


async def _patch_lease(
    ctx: OperatorContext, namespace: str, name: str, patch: dict[str, Any]
) -> None:
    try:
        await client.merge_patch(ctx.api, LEASE, namespace, name, patch)
    except client.ApiError as error:
        if error.status != 404:  # gone: the Sandbox (and its Lease) is being recreated
            raise


async def _converge_sandbox(ctx: OperatorContext, decision: sl.Decision, seen: Seen) -> str | None:
    """Apply or delete the Sandbox as decided; the API server's refusal, if any.

    Applied whenever the live Sandbox differs from the session's (a hand edit is reverted).
    """
    owner, current_body, intent = seen.owner, seen.sandbox, decision.sandbox
    if intent is sl.SandboxIntent.DELETE and current_body is not None:
        await client.delete(
            ctx.api,
            SANDBOX,
            owner.namespace,
            build.sandbox_name(owner.name),
            preconditions_uid=current_body["metadata"]["uid"],
        )
        return None
    if intent not in (sl.SandboxIntent.RUN, sl.SandboxIntent.HIBERNATE):
        return None
    spec = build.sandbox_spec(seen.session.spec, hibernate=intent is sl.SandboxIntent.HIBERNATE)
    manifest = build.sandbox(owner, spec, release_checkpoint=decision.release_checkpoint)
    if not build.sandbox_drifted(manifest, current_body):
        return None
    try:
        await client.apply(ctx.api, manifest)
    except client.ApiError as error:
        if error.status != 422:
            raise
        return str(error.body.get("message") or error)
    return None


async def _write_status(
    ctx: OperatorContext,
    seen: Seen,
    status: AgentSessionStatus,
    decision: sl.Decision,
    apply_error: str | None,
) -> None:
    observed, owner, body = seen.observed, seen.owner, seen.body
    now = observed.now
    updates = decision.conditions
    decision_events = list(decision.events)
    if apply_error is not None:
        message = f"the Sandbox was not updated: {apply_error}"
        updates += (
            ConditionUpdate(ConditionType.READY, False, Reason.INVALID_SANDBOX_TEMPLATE, message),
        )
        old = {c.type: c.reason for c in status.conditions}
        if old.get(ConditionType.READY) != Reason.INVALID_SANDBOX_TEMPLATE:
            decision_events.append(sl.Event(Reason.INVALID_SANDBOX_TEMPLATE, message, warning=True))
    updates = tuple(_with_address(u, owner, ctx) for u in updates)
    status.phase = decision.phase
    kept = [c for c in status.conditions if c.type not in decision.drop_conditions]
    status.conditions = merge_conditions(kept, updates, observed.generation, now)
    status.observed_generation = observed.generation
    status.endpoint = build.endpoint(owner.namespace, owner.name)
    status.sandbox_ref = (
        LocalObjectReference(name=build.sandbox_name(owner.name)) if decision.sandbox_ref else None
    )
    secret_exists = seen.secret is not None or sl.Action.CREATE_TOKEN in decision.actions
    status.token_secret_ref = (
        SecretKeyReference(name=build.token_secret_name(owner.name), key=token.TOKEN_KEY)
        if secret_exists
        else None
    )
    if decision.start_time is not None:
        status.start_time = decision.start_time
    view = observed.sandbox
    moments = [
        m
        for m in (
            status.last_activity_time,
            observed.activity.last_request,
            view.last_activity if view is not None else None,
        )
        if m is not None
    ]
    status.last_activity_time = max(moments) if moments else None
    status.usage = await _account_usage(ctx, seen, status.usage)
    patch = status_patch(body.get("status") or {}, status.to_wire())
    if patch is not None:
        await client.merge_patch(
            ctx.api, AGENT_SESSION, owner.namespace, owner.name, patch, subresource="status"
        )
    for event in decision_events:
        log.info(event.message, extra={"session": f"{owner.namespace}/{owner.name}"})
        event_type = events.WARNING if event.warning else events.NORMAL
        await events.post(ctx.api, body, event_type, event.reason, event.message)


def _with_address(
    update: ConditionUpdate, owner: Identity, ctx: OperatorContext
) -> ConditionUpdate:
    """A Ready session says where it is reached: the path, and the host form if any."""
    if update.type != ConditionType.READY or not update.status:
        return update
    where = build.endpoint(owner.namespace, owner.name)
    host = build.host_endpoint(owner.namespace, owner.name, ctx.config.router_domain)
    text = f"reachable through the router at {where}" + (f" and at host {host}" if host else "")
    return replace(update, message=text)


async def _account_usage(ctx: OperatorContext, seen: Seen, last_total: Usage | None) -> Usage:
    """The session's usage: retired sandboxes plus the current one; the ledger is written
    before the status, so a crash in between loses nothing."""
    metadata = seen.body["metadata"]
    annotations = metadata.get("annotations") or {}
    ledger = usage_ledger(annotations)
    view = seen.observed.sandbox
    current_sandbox = view if view is not None and view.owned else None
    new_ledger, total = sl.account_usage(
        ledger,
        last_total,
        current_sandbox.uid if current_sandbox else None,
        current_sandbox.usage if current_sandbox else None,
    )
    wanted = ledger_annotations(new_ledger)
    if any(annotations.get(key) != value for key, value in wanted.items()):
        await client.merge_patch(
            ctx.api,
            AGENT_SESSION,
            metadata["namespace"],
            metadata["name"],
            {"metadata": {"annotations": wanted}},
        )
    return total


async def release_unowned(ctx: OperatorContext, namespace: str, name: str) -> None:
    """After a session is gone: its Lease, if the router created it after the operator last
    saw the session (no owner reference, so garbage collection would never take it)."""
    lease_name = build.activity_lease_name(name)
    lease = await client.get(ctx.api, LEASE, namespace, lease_name)
    if lease is not None and not lease["metadata"].get("ownerReferences"):
        await client.delete(ctx.api, LEASE, namespace, lease_name)


# --- kopf wiring ------------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "agentsessions")
async def session_changed(type: str, namespace: str | None, name: str, **_: Any) -> None:
    if not namespace:
        return
    ctx = current()
    if type == "DELETED":
        with contextlib.suppress(client.ApiError):
            await release_unowned(ctx, namespace, name)
        ctx.forget(KIND, namespace, name)
        return
    await reconcile(ctx, namespace, name)


@kopf.timer(GROUP, VERSION, "agentsessions", interval=reconcile_interval(), initial_delay=1)
async def session_tick(namespace: str | None, name: str, **_: Any) -> None:
    if namespace:
        await reconcile(current(), namespace, name)


@kopf.on.event(GROUP, VERSION, "sandboxes", labels={build.SESSION_LABEL: kopf.PRESENT})
async def session_sandbox_changed(
    namespace: str | None, labels: Mapping[str, str], **_: Any
) -> None:
    if namespace:
        await reconcile(current(), namespace, labels[build.SESSION_LABEL])


@kopf.on.event(
    "coordination.k8s.io",
    "v1",
    "leases",
    labels={names.TARGET_KIND_LABEL: build.SESSION_TARGET_KIND},
)
async def session_activity_changed(
    namespace: str | None, labels: Mapping[str, str], **_: Any
) -> None:
    if namespace and names.TARGET_NAME_LABEL in labels:
        await reconcile(current(), namespace, labels[names.TARGET_NAME_LABEL])
