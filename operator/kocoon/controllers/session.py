"""The AgentSession controller: read the stores, ask the session life cycle what next, do it.

A thin pipe on the reconcile core (`controllers/reconciler.py`). kopf watch events on the
session, its Sandbox, its token Secret, its activity Lease, its Sandbox's Lease and the
ModelDeployments feed the stores and trigger the session's worker; a reconcile reads only
from the stores. The worker runs again when the decision's deadline is due (token grace,
maxLifetime, retention, a stale in-flight count), on the next event, or at the resync; a
failure is written as Ready=False/ReconcilerError with a Warning Event, and backs off.

Every reconcile converges every child: the Sandbox is applied whenever its live spec differs
from the session's (a hand edit is reverted), a deleted token Secret or Lease is recreated.
The children carry owner references to the session, so deleting it releases them by garbage
collection; the Sandbox's own finalizer releases its checkpoint.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import kopf
from pydantic import ValidationError

from kocoon import session_lifecycle as sl
from kocoon.api.common import LocalObjectReference, SecretKeyReference
from kocoon.api.conditions import ConditionType
from kocoon.api.sandbox import SandboxStatus, Usage
from kocoon.api.session import AgentSession, AgentSessionStatus
from kocoon.builders import names, token
from kocoon.builders import session as build
from kocoon.builders.context import Identity
from kocoon.controllers import common, failpoints, observe
from kocoon.controllers.context import OperatorContext, current, resync_seconds
from kocoon.controllers.reconciler import Key, Reconciler, Result
from kocoon.kube import client, events
from kocoon.kube.resources import (
    AGENT_SESSION,
    GROUP,
    LEASE,
    MODEL_DEPLOYMENT,
    SANDBOX,
    SECRET,
    VERSION,
    Kind,
)
from kocoon.status import ConditionUpdate, merge_conditions, status_patch

log = logging.getLogger(__name__)
KIND = AGENT_SESSION.kind

# The stores this controller reads, fed by its own watch handlers below.
SESSIONS = "AgentSession"
SANDBOXES = "AgentSession/Sandbox"  # the Sandboxes labelled with a session
SECRETS = "AgentSession/Secret"  # the sessions' token Secrets
LEASES = "AgentSession/Lease"  # the sessions' Leases and every Sandbox's Lease
MODELS = "AgentSession/ModelDeployment"
# A session's Sandbox as its DELETED event last reported it (its final usage), until the
# session's usage ledger has folded it in.
DEPARTED = "AgentSession/DepartedSandbox"

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


def token_view(
    secret: dict[str, Any] | None, session: Identity | None = None
) -> sl.TokenView | None:
    if secret is None:
        return None
    metadata = secret.get("metadata", {})
    annotations = metadata.get("annotations") or {}
    owned = session is None or (
        (metadata.get("labels") or {}).get(build.SESSION_LABEL) == session.name
        and any(
            ref.get("uid") == session.uid and ref.get("controller")
            for ref in metadata.get("ownerReferences") or []
        )
    )
    return sl.TokenView(
        has_previous=bool((secret.get("data") or {}).get(token.PREVIOUS_TOKEN_KEY)),
        rotation=annotations.get(build.TOKEN_ROTATION_ANNOTATION),
        rotated_at=observe.parse_time(annotations.get(build.TOKEN_ROTATED_AT_ANNOTATION)),
        owned=owned,
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


# --- the stores and the reconciler ------------------------------------------------------------


def cache(ctx: OperatorContext, store: str, event_type: str | None, body: dict[str, Any]) -> None:
    """A watch event into a store: the object as reported, or gone."""
    metadata = body.get("metadata") or {}
    if event_type == "DELETED":
        ctx.store(store).remove(metadata.get("namespace"), str(metadata.get("name")))
    else:
        ctx.store(store).upsert(body)


def reconciler(ctx: OperatorContext) -> Reconciler:
    """The AgentSession reconciler of this operator, created on first use."""
    found = ctx.reconcilers.get(KIND)
    if found is None:
        found = ctx.reconcilers[KIND] = Reconciler(
            "agentsession",
            partial(_reconcile_key, ctx),
            resync=resync_seconds(),
            report_error=partial(_report_error, ctx),
        )
    return found


async def _reconcile_key(ctx: OperatorContext, key: Key) -> Result:
    return await reconcile(ctx, key.namespace, key.name)


async def _report_error(ctx: OperatorContext, key: Key, error: Exception, failures: int) -> None:
    if common.namespace_terminating(error):
        return
    body = ctx.store(SESSIONS).get(key.namespace, key.name)
    await common.report_error(ctx, AGENT_SESSION, body, error, failures)


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


async def reconcile(ctx: OperatorContext, namespace: str, name: str) -> Result:
    """One level-based pass over the session, from the stores; when to run again."""
    body = ctx.store(SESSIONS).get(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return Result()  # garbage collection releases what it owns
    try:
        session = AgentSession.model_validate(body)
    except ValidationError as error:
        await common.report_invalid(ctx, AGENT_SESSION, body, error)
        return Result()
    try:
        return await _reconcile(ctx, body, session)
    except client.ApiError as error:
        if common.namespace_terminating(error):
            return Result()  # its namespace is going away, and the session with it
        raise


async def _reconcile(ctx: OperatorContext, body: dict[str, Any], session: AgentSession) -> Result:
    seen = await observe_session(ctx, body, session)
    decision = sl.decide(seen.observed)
    status = (session.status or AgentSessionStatus()).model_copy(deep=True)
    failures: list[str] = []
    token_written = True
    for action in decision.actions:
        try:
            await _act(ctx, action, seen, decision)
        except client.ApiError as error:
            if action is not sl.Action.CREATE_TOKEN or not _child_failure(error):
                raise
            token_written = False
            failures.append(f"Secret {build.token_secret_name(seen.owner.name)}: {_said(error)}")
        failpoints.hit(f"session:after:{action.value}")
    refused = await _converge_children(ctx, decision, seen, failures)
    previous = {c.type: (c.reason, c.last_transition_time) for c in status.conditions}
    report = sl.report_children(
        sl.ChildrenOutcome(sandbox_refused=refused, failures=tuple(failures)),
        previous,
        seen.observed.now,
    )
    await _write_status(ctx, seen, status, decision, report, token_written)
    pauses = [p for p in (decision.requeue_after, report.requeue_after) if p is not None]
    return Result(requeue_after=min(pauses) if pauses else None)


def _child_failure(error: client.ApiError) -> bool:
    """A refusal to report as ChildrenReady=False and retry (quota, RBAC, 422…); not a moved
    resourceVersion (retried at once) nor a namespace going away."""
    return not isinstance(error, client.Conflict) and not common.namespace_terminating(error)


def _said(error: client.ApiError) -> str:
    return common.error_message(error)


async def observe_session(
    ctx: OperatorContext, body: dict[str, Any], session: AgentSession
) -> Seen:
    """What the stores hold about the session and its children, as the life cycle's input."""
    metadata = body["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    owner = build.session_identity(name, namespace, metadata["uid"])
    now = _now()
    status = session.status or AgentSessionStatus()
    sandbox = await _read(
        ctx, SANDBOXES, SANDBOX, namespace, build.sandbox_name(name), status.sandbox_ref is not None
    )
    secret = await _read(
        ctx,
        SECRETS,
        SECRET,
        namespace,
        build.token_secret_name(name),
        status.token_secret_ref is not None,
    )
    leases = ctx.store(LEASES)
    lease = leases.get(namespace, build.activity_lease_name(name))
    sandbox_lease = (
        leases.get(namespace, names.activity_lease_name(build.sandbox_name(name)))
        if sandbox is not None
        else None
    )
    known_missing = any(
        c.type == ConditionType.MODELS_AVAILABLE and c.status == "False" for c in status.conditions
    )
    models_present = frozenset(
        [
            ref.name
            for ref in session.spec.models
            if await _read(ctx, MODELS, MODEL_DEPLOYMENT, namespace, ref.name, not known_missing)
            is not None
        ]
    )
    template_error = None
    try:
        build.sandbox_spec(session.spec)
    except build.TemplateError as error:
        template_error = str(error)
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
        token=token_view(secret, owner),
        rotate_request=annotations.get(build.ROTATE_TOKEN_ANNOTATION),
        activity=observe.activity(lease),
        sandbox_activity=observe.activity(sandbox_lease),
        template_error=template_error,
        models_present=models_present,
    )
    return Seen(body, session, owner, sandbox, secret, lease, observed)


async def _read(
    ctx: OperatorContext, store: str, kind: Kind, namespace: str, name: str, expected: bool
) -> dict[str, Any] | None:
    """An object from its store; when it is missing there but expected to exist (the status
    names it: the watch may not have listed it yet, e.g. just after a restart), from the API
    server, once, into the store."""
    found = ctx.store(store).get(namespace, name)
    if found is not None or not expected:
        return found
    found = await client.get(ctx.api, kind, namespace, name)
    if found is not None:
        found = {"apiVersion": kind.api_version, "kind": kind.kind, **found}
        ctx.store(store).upsert(found)
    return found


def _put(ctx: OperatorContext, store: str, body: dict[str, Any]) -> None:
    """The answer to a write into its store at once: the next reconcile reads what was written
    even before the watch reports it (the store keeps the newer of the two)."""
    if body.get("metadata"):
        ctx.store(store).upsert(body)


async def _act(ctx: OperatorContext, action: sl.Action, seen: Seen, decision: sl.Decision) -> None:
    owner, observed = seen.owner, seen.observed
    sandbox_lease = names.activity_lease_name(build.sandbox_name(owner.name))
    if action is sl.Action.CREATE_TOKEN:
        manifest = build.token_secret(owner, token.new_token(), observed.rotate_request)
        try:
            created = await client.request(
                ctx.api, "POST", SECRET.path(owner.namespace), body=manifest
            )
        except client.ApiError as error:
            if error.status != 409:  # 409: created meanwhile; it is never overwritten
                raise
        else:
            _put(ctx, SECRETS, created)
    elif action is sl.Action.ROTATE_TOKEN and seen.secret is not None:
        assert observed.rotate_request is not None
        patch = build.token_rotation_patch(
            token.new_token(),
            _decode(seen.secret, token.TOKEN_KEY),
            observed.rotate_request,
            observed.now,
        )
        rotated = await client.merge_patch(
            ctx.api,
            SECRET,
            owner.namespace,
            build.token_secret_name(owner.name),
            patch,
            resource_version=seen.secret["metadata"].get("resourceVersion"),
        )
        _put(ctx, SECRETS, rotated)
    elif action is sl.Action.CLAIM_TOKEN and seen.secret is not None:
        claimed = await client.merge_patch(
            ctx.api,
            SECRET,
            owner.namespace,
            build.token_secret_name(owner.name),
            build.token_claim_patch(owner),
            resource_version=seen.secret["metadata"].get("resourceVersion"),
        )
        _put(ctx, SECRETS, claimed)
    elif action is sl.Action.DROP_PREVIOUS_TOKEN:
        dropped = await client.merge_patch(
            ctx.api,
            SECRET,
            owner.namespace,
            build.token_secret_name(owner.name),
            build.drop_previous_token_patch(),
        )
        _put(ctx, SECRETS, dropped)
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
        _put(ctx, LEASES, await client.merge_patch(ctx.api, LEASE, namespace, name, patch))
    except client.ApiError as error:
        if error.status != 404:  # gone: the Sandbox (and its Lease) is being recreated
            raise


async def _converge_children(
    ctx: OperatorContext, decision: sl.Decision, seen: Seen, failures: list[str]
) -> str | None:
    """Converge the Sandbox and the Lease; a refused write is added to `failures` and does not
    stop the rest. Returns the API server's 422 on the Sandbox (an invalid template), if any."""
    refused = None
    name = build.sandbox_name(seen.owner.name)
    try:
        refused = await _converge_sandbox(ctx, decision, seen)
    except client.ApiError as error:
        if not _child_failure(error):
            raise
        failures.append(f"Sandbox {name}: {_said(error)}")
    if seen.lease is None or not owns(seen.lease, seen.owner.uid):
        try:
            _put(ctx, LEASES, await client.apply(ctx.api, build.activity_lease(seen.owner)))
        except client.ApiError as error:
            if not _child_failure(error):
                raise
            failures.append(f"Lease {build.activity_lease_name(seen.owner.name)}: {_said(error)}")
    return refused


async def _converge_sandbox(ctx: OperatorContext, decision: sl.Decision, seen: Seen) -> str | None:
    """Apply or delete the Sandbox as decided; the API server's refusal (422), if any.

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
    foreign = build.session_owned_patch(current_body)
    if foreign is not None and current_body is not None:
        patched = await client.merge_patch(
            ctx.api,
            SANDBOX,
            owner.namespace,
            build.sandbox_name(owner.name),
            foreign,
            resource_version=current_body["metadata"].get("resourceVersion"),
        )
        _put(ctx, SANDBOXES, patched)
        current_body = patched
    if not build.sandbox_drifted(manifest, current_body):
        return None
    try:
        _put(ctx, SANDBOXES, await client.apply(ctx.api, manifest))
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
    report: sl.ChildrenReport,
    token_written: bool,
) -> None:
    observed, owner = seen.observed, seen.owner
    updates = tuple(_with_address(u, owner, ctx) for u in decision.conditions + report.conditions)
    decision_events = decision.events + report.events
    status.phase = decision.phase
    kept = [c for c in status.conditions if c.type not in decision.drop_conditions]
    status.conditions = merge_conditions(kept, updates, observed.generation, observed.now)
    status.observed_generation = observed.generation
    status.endpoint = build.endpoint(owner.namespace, owner.name)
    status.sandbox_ref = (
        LocalObjectReference(name=build.sandbox_name(owner.name)) if decision.sandbox_ref else None
    )
    secret_exists = seen.secret is not None or (
        sl.Action.CREATE_TOKEN in decision.actions and token_written
    )
    status.token_secret_ref = (
        SecretKeyReference(name=build.token_secret_name(owner.name), key=token.TOKEN_KEY)
        if secret_exists
        else None
    )
    if decision.start_time is not None:
        status.start_time = decision.start_time
    status.last_activity_time = sl.last_activity_time(
        status.last_activity_time, observed.activity, observed.sandbox
    )
    body = await _account_usage(ctx, seen, status, decision)
    patch = status_patch(body.get("status") or {}, status.to_wire())
    if patch is not None:
        written = await client.merge_patch(
            ctx.api,
            AGENT_SESSION,
            owner.namespace,
            owner.name,
            patch,
            subresource="status",
            resource_version=body["metadata"].get("resourceVersion"),
        )
        _put(ctx, SESSIONS, written)
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


async def _account_usage(
    ctx: OperatorContext, seen: Seen, status: AgentSessionStatus, decision: sl.Decision
) -> dict[str, Any]:
    """Set the session's usage (retired sandboxes plus the current one), refreshed at phase
    changes, on a new or gone Sandbox, and at most once a minute otherwise. The ledger is
    written before the status, so a crash in between loses nothing; the session as it is now.
    """
    body = seen.body
    metadata = body["metadata"]
    annotations = metadata.get("annotations") or {}
    ledger = usage_ledger(annotations)
    view = seen.observed.sandbox
    current_sandbox = view if view is not None and view.owned else None
    departed_body = ctx.store(DEPARTED).get(metadata["namespace"], metadata["name"])
    departed_view = sandbox_view(departed_body, seen.owner.uid)
    new_ledger, total = sl.account_usage(
        ledger,
        status.usage,
        current_sandbox.uid if current_sandbox else None,
        current_sandbox.usage if current_sandbox else None,
        (departed_view.uid, departed_view.usage) if departed_view is not None else None,
    )
    status.usage = sl.usage_to_write(
        status.usage,
        total,
        current_sandbox,
        phase_changed=decision.phase != seen.observed.phase,
        ledger_changed=new_ledger != ledger,
    )
    wanted = ledger_annotations(new_ledger)
    if any(annotations.get(key) != value for key, value in wanted.items()):
        body = await client.merge_patch(
            ctx.api,
            AGENT_SESSION,
            metadata["namespace"],
            metadata["name"],
            {"metadata": {"annotations": wanted}},
            resource_version=metadata.get("resourceVersion"),
        )
        _put(ctx, SESSIONS, body)
    if departed_view is not None and new_ledger.sandbox_uid != departed_view.uid:
        ctx.store(DEPARTED).remove(metadata["namespace"], metadata["name"])  # folded in
    return body


async def release_unowned(ctx: OperatorContext, namespace: str, name: str) -> None:
    """After a session is gone: its Lease, if the router created it after the operator last
    saw the session (no owner reference, so garbage collection would never take it)."""
    lease_name = build.activity_lease_name(name)
    lease = ctx.store(LEASES).get(namespace, lease_name)
    if lease is not None and not lease["metadata"].get("ownerReferences"):
        await client.delete(ctx.api, LEASE, namespace, lease_name)


def sessions_using_model(ctx: OperatorContext, namespace: str, model: str) -> list[str]:
    """The sessions of a namespace whose spec.models names `model`."""
    return [
        body["metadata"]["name"]
        for body in ctx.store(SESSIONS).select(namespace, {})
        if any(ref.get("name") == model for ref in (body.get("spec") or {}).get("models") or [])
    ]


# --- kopf wiring: watch events feed the stores and trigger the session's worker -------------


@kopf.on.startup()
async def _select_token_secrets(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Only token Secrets are watched (server-side selector), never every Secret in the cluster.
    settings.watching.label_selectors["v1", "secrets"] = f"{token.TOKEN_LABEL}=true"


@kopf.on.cleanup()
async def _stop(**_: Any) -> None:
    with contextlib.suppress(RuntimeError):
        found = current().reconcilers.get(KIND)
        if found is not None:
            await found.close()


@kopf.on.event(GROUP, VERSION, "agentsessions")
async def session_changed(
    type: str | None, body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> None:
    if not namespace:
        return
    ctx = current()
    cache(ctx, SESSIONS, type, dict(body))
    if type == "DELETED":
        reconciler(ctx).forget(Key(namespace, name))
        ctx.store(DEPARTED).remove(namespace, name)
        with contextlib.suppress(client.ApiError):
            await release_unowned(ctx, namespace, name)
        return
    reconciler(ctx).trigger(Key(namespace, name))


@kopf.on.event(GROUP, VERSION, "sandboxes", labels={build.SESSION_LABEL: kopf.PRESENT})
async def session_sandbox_changed(
    type: str | None, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> None:
    if namespace:
        ctx = current()
        cache(ctx, SANDBOXES, type, dict(body))
        if type == "DELETED":
            ctx.store(DEPARTED).upsert(dict(body))
        _trigger_if_known(ctx, namespace, labels[build.SESSION_LABEL])


@kopf.on.event("v1", "secrets", labels={build.SESSION_LABEL: kopf.PRESENT})
async def session_secret_changed(
    type: str | None, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> None:
    if namespace:
        ctx = current()
        cache(ctx, SECRETS, type, dict(body))
        _trigger_if_known(ctx, namespace, labels[build.SESSION_LABEL])


@kopf.on.event(
    "coordination.k8s.io",
    "v1",
    "leases",
    labels={names.TARGET_KIND_LABEL: build.SESSION_TARGET_KIND},
)
async def session_activity_changed(
    type: str | None, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> None:
    if namespace and names.TARGET_NAME_LABEL in labels:
        ctx = current()
        cache(ctx, LEASES, type, dict(body))
        _trigger_if_known(ctx, namespace, labels[names.TARGET_NAME_LABEL])


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels={names.TARGET_KIND_LABEL: "sandbox"})
async def session_sandbox_activity_changed(
    type: str | None, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> None:
    if namespace and names.TARGET_NAME_LABEL in labels:
        ctx = current()
        cache(ctx, LEASES, type, dict(body))
        # The Sandbox named like a session is that session's.
        _trigger_if_known(ctx, namespace, labels[names.TARGET_NAME_LABEL])


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def session_model_changed(
    type: str | None, body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> None:
    if not namespace:
        return
    ctx = current()
    known = ctx.store(MODELS).get(namespace, name) is not None
    cache(ctx, MODELS, type, dict(body))
    if known != (type != "DELETED"):  # it appeared or went: the sessions naming it are told
        for session in sessions_using_model(ctx, namespace, name):
            reconciler(ctx).trigger(Key(namespace, session))


def _trigger_if_known(ctx: OperatorContext, namespace: str, name: str) -> None:
    if ctx.store(SESSIONS).get(namespace, name) is not None:
        reconciler(ctx).trigger(Key(namespace, name))
