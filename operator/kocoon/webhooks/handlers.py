"""The admission handlers, registered on a kopf registry.

Handler ids are the webhook paths (`/<id>`), and the webhook manifests in `webhooks/` are built
from this registration, so the two cannot drift.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import kopf
from pydantic import ValidationError

from kocoon.api import GROUP, VERSION
from kocoon.api.model import ModelDeploymentSpec
from kocoon.api.sandbox import SandboxSpec
from kocoon.api.session import AgentSessionSpec
from kocoon.builders.context import GpuResourceNames
from kocoon.config import OperatorConfig
from kocoon.webhooks import admission

log = logging.getLogger("kocoon.webhooks")

VALIDATE_SANDBOX = "validate-sandbox"
VALIDATE_SESSION = "validate-agentsession"
VALIDATE_MODEL = "validate-modeldeployment"
DEFAULT_SANDBOX = "default-sandbox"
DEFAULT_SESSION = "default-agentsession"
DEFAULT_MODEL = "default-modeldeployment"
OPERATIONS: list[Literal["CREATE", "UPDATE"]] = ["CREATE", "UPDATE"]
RUNTIME_CLASS_INDEX = "kocoon_runtime_classes"
SANDBOX_INDEX = "kocoon_sandboxes_by_namespace"
SESSION_INDEX = "kocoon_sessions_by_namespace"
MIG_PROFILE_INDEX = "kocoon_mig_profiles_on_nodes"
MIG_RESOURCE_PREFIX = GpuResourceNames().mig_prefix

ConfigGetter = Callable[[], OperatorConfig]


def _reject(problems: list[str], kind: str, namespace: str | None, name: str | None) -> None:
    if problems:
        # `name` is a LogRecord attribute: passing it as an extra would raise instead of
        # answering, so the object is logged as `object`.
        log.info(
            "admission denied",
            extra={"kind": kind, "namespace": namespace, "object": name, "problems": problems},
        )
        raise kopf.AdmissionError("; ".join(problems), code=422)


def _parse(model: type[Any], spec: Any, kind: str) -> Any:
    """The typed spec; schema errors are the API server's to report, so this rarely fails."""
    try:
        return model.model_validate(dict(spec))
    except ValidationError as error:
        details = "; ".join(
            f"spec.{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise kopf.AdmissionError(f"invalid {kind}: {details}", code=422) from None


def _old_spec(old: Any) -> dict[str, Any] | None:
    spec = (old or {}).get("spec")
    return dict(spec) if isinstance(spec, Mapping) else None


def _deleting(body: Any) -> bool:
    return bool(((body or {}).get("metadata") or {}).get("deletionTimestamp"))


def _problems(
    model: type[Any],
    rule: Callable[[Any, OperatorConfig, admission.ClusterFacts], list[str]],
    kind: str,
    spec: Any,
    old: Any,
    body: Any,
    config: OperatorConfig,
    facts: admission.ClusterFacts,
) -> list[str]:
    """What is wrong with the object, or on UPDATE only with what the update changes.

    An update that leaves the spec as it was (finalizers, labels, annotations, an unchanged
    apply) or comes while the object is being deleted is never refused: a rule or a cluster
    fact that changed since the object was admitted must not make it undeletable.
    """
    new_spec = dict(spec or {})
    old_spec = _old_spec(old) if not facts.creating else None
    if old_spec is not None and (_deleting(body) or new_spec == old_spec):
        return []
    problems: list[str] = rule(_parse(model, new_spec, kind), config, facts)
    if old_spec is None or not problems:
        return problems
    try:
        before = rule(model.model_validate(old_spec), config, facts)
    except ValidationError:
        before = []  # the old object does not parse (an older schema): judge the new one whole
    return admission.new_problems(problems, before)


def _leave_alone(spec: Any, old_spec: dict[str, Any] | None, body: Any) -> bool:
    """An update that does not touch the spec, or comes during deletion, gets no defaults."""
    return old_spec is not None and (_deleting(body) or dict(spec or {}) == old_spec)


def _facts(
    namespace: str | None,
    operation: str | None,
    indices: dict[str, Any],
    count_index: str,
) -> admission.ClusterFacts:
    runtime_index = indices.get(RUNTIME_CLASS_INDEX)
    counts = indices.get(count_index)
    mig_index = indices.get(MIG_PROFILE_INDEX)
    ns = namespace or ""
    return admission.ClusterFacts(
        namespace=ns,
        creating=operation == "CREATE",
        runtime_classes=set(runtime_index.get(None, [])) if runtime_index is not None else None,
        objects_in_namespace=len(counts.get(ns, [])) if counts is not None else 0,
        mig_profiles_on_nodes=set(mig_index.keys()) if mig_index is not None else None,
    )


def mig_profiles_offered(node: str, status: Any) -> dict[str, str]:
    """The MIG profiles a node advertises (allocatable `nvidia.com/mig-<profile>` above 0),
    each mapped to the node."""
    allocatable = (status or {}).get("allocatable") or {}
    return {
        resource.removeprefix(MIG_RESOURCE_PREFIX): node
        for resource, amount in allocatable.items()
        if resource.startswith(MIG_RESOURCE_PREFIX) and str(amount) not in ("0", "")
    }


def register(registry: kopf.OperatorRegistry, config: ConfigGetter) -> None:
    """Register the admission handlers and the indices they read on `registry`."""

    @kopf.index("node.k8s.io", "v1", "runtimeclasses", id=RUNTIME_CLASS_INDEX, registry=registry)
    def runtime_classes(name: str, **_: Any) -> dict[None, str]:
        return {None: name}

    @kopf.index("", "v1", "nodes", id=MIG_PROFILE_INDEX, registry=registry)
    def mig_profiles(name: str, status: Any, **_: Any) -> dict[str, str]:
        return mig_profiles_offered(name, status)

    @kopf.index(GROUP, VERSION, "sandboxes", id=SANDBOX_INDEX, registry=registry)
    def sandboxes(namespace: str | None, name: str, **_: Any) -> dict[str | None, str]:
        return {namespace: name}

    @kopf.index(GROUP, VERSION, "agentsessions", id=SESSION_INDEX, registry=registry)
    def sessions(namespace: str | None, name: str, **_: Any) -> dict[str | None, str]:
        return {namespace: name}

    @kopf.on.validate(
        GROUP, VERSION, "sandboxes", id=VALIDATE_SANDBOX, operations=OPERATIONS, registry=registry
    )
    def validate_sandbox(
        spec: Any,
        namespace: str | None,
        name: str | None,
        operation: str | None = None,
        old: Any = None,
        body: Any = None,
        **kw: Any,
    ) -> None:
        facts = _facts(namespace, operation, kw, SANDBOX_INDEX)
        problems = _problems(
            SandboxSpec, admission.validate_sandbox, "Sandbox", spec, old, body, config(), facts
        )
        _reject(problems, "Sandbox", namespace, name)

    @kopf.on.validate(
        GROUP,
        VERSION,
        "agentsessions",
        id=VALIDATE_SESSION,
        operations=OPERATIONS,
        registry=registry,
    )
    def validate_session(
        spec: Any,
        namespace: str | None,
        name: str | None,
        operation: str | None = None,
        old: Any = None,
        body: Any = None,
        **kw: Any,
    ) -> None:
        facts = _facts(namespace, operation, kw, SESSION_INDEX)
        problems = _problems(
            AgentSessionSpec,
            admission.validate_session,
            "AgentSession",
            spec,
            old,
            body,
            config(),
            facts,
        )
        _reject(problems, "AgentSession", namespace, name)

    @kopf.on.validate(
        GROUP,
        VERSION,
        "modeldeployments",
        id=VALIDATE_MODEL,
        operations=OPERATIONS,
        registry=registry,
    )
    def validate_model(
        spec: Any,
        namespace: str | None,
        name: str | None,
        operation: str | None = None,
        old: Any = None,
        body: Any = None,
        **kw: Any,
    ) -> None:
        facts = _facts(namespace, operation, kw, "")
        problems = _problems(
            ModelDeploymentSpec,
            admission.validate_model,
            "ModelDeployment",
            spec,
            old,
            body,
            config(),
            facts,
        )
        _reject(problems, "ModelDeployment", namespace, name)

    @kopf.on.mutate(
        GROUP, VERSION, "sandboxes", id=DEFAULT_SANDBOX, operations=OPERATIONS, registry=registry
    )
    def default_sandbox(
        spec: Any, patch: kopf.Patch, old: Any = None, body: Any = None, **_: Any
    ) -> None:
        old_spec = _old_spec(old)
        if _leave_alone(spec, old_spec, body):
            return
        changes = admission.sandbox_spec_defaults(dict(spec), old_spec, config())
        if changes:
            patch["spec"] = changes

    @kopf.on.mutate(
        GROUP,
        VERSION,
        "agentsessions",
        id=DEFAULT_SESSION,
        operations=OPERATIONS,
        registry=registry,
    )
    def default_session(
        spec: Any, patch: kopf.Patch, old: Any = None, body: Any = None, **_: Any
    ) -> None:
        old_spec = _old_spec(old)
        template = spec.get("sandboxTemplate")
        if not isinstance(template, dict) or _leave_alone(spec, old_spec, body):
            return
        old_template = (old_spec or {}).get("sandboxTemplate")
        changes = admission.sandbox_spec_defaults(
            template, old_template, config(), session_hibernation=spec.get("hibernation")
        )
        if changes:
            patch["spec"] = {"sandboxTemplate": changes}

    @kopf.on.mutate(
        GROUP,
        VERSION,
        "modeldeployments",
        id=DEFAULT_MODEL,
        operations=OPERATIONS,
        registry=registry,
    )
    def default_model(
        spec: Any, patch: kopf.Patch, old: Any = None, body: Any = None, **_: Any
    ) -> None:
        old_spec = _old_spec(old)
        if _leave_alone(spec, old_spec, body):
            return
        changes = admission.model_spec_defaults(dict(spec), old_spec, config())
        if changes:
            patch["spec"] = changes
