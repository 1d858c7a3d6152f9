"""The admission handlers, registered on a kopf registry.

Handler ids are the webhook paths (`/<id>`), and the webhook manifests in `webhooks/` are built
from this registration, so the two cannot drift.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import kopf
from pydantic import ValidationError

from kocoon.api import GROUP, VERSION
from kocoon.api.model import ModelDeploymentSpec
from kocoon.api.sandbox import SandboxSpec
from kocoon.api.session import AgentSessionSpec
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

ConfigGetter = Callable[[], OperatorConfig]


def _reject(problems: list[str], kind: str, namespace: str | None, name: str | None) -> None:
    if problems:
        log.info(
            "admission denied",
            extra={"kind": kind, "namespace": namespace, "name": name, "problems": problems},
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


def _facts(
    namespace: str | None,
    operation: str | None,
    indices: dict[str, Any],
    count_index: str,
) -> admission.ClusterFacts:
    runtime_index = indices.get(RUNTIME_CLASS_INDEX)
    counts = indices.get(count_index)
    ns = namespace or ""
    return admission.ClusterFacts(
        namespace=ns,
        creating=operation == "CREATE",
        runtime_classes=set(runtime_index.get(None, [])) if runtime_index is not None else None,
        objects_in_namespace=len(counts.get(ns, [])) if counts is not None else 0,
    )


def register(registry: kopf.OperatorRegistry, config: ConfigGetter) -> None:
    """Register the admission handlers and the indices they read on `registry`."""

    @kopf.index("node.k8s.io", "v1", "runtimeclasses", id=RUNTIME_CLASS_INDEX, registry=registry)
    def runtime_classes(name: str, **_: Any) -> dict[None, str]:
        return {None: name}

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
        spec: Any, namespace: str | None, name: str | None, operation: str | None = None, **kw: Any
    ) -> None:
        facts = _facts(namespace, operation, kw, SANDBOX_INDEX)
        parsed = _parse(SandboxSpec, spec, "Sandbox")
        _reject(admission.validate_sandbox(parsed, config(), facts), "Sandbox", namespace, name)

    @kopf.on.validate(
        GROUP,
        VERSION,
        "agentsessions",
        id=VALIDATE_SESSION,
        operations=OPERATIONS,
        registry=registry,
    )
    def validate_session(
        spec: Any, namespace: str | None, name: str | None, operation: str | None = None, **kw: Any
    ) -> None:
        facts = _facts(namespace, operation, kw, SESSION_INDEX)
        parsed = _parse(AgentSessionSpec, spec, "AgentSession")
        _reject(
            admission.validate_session(parsed, config(), facts), "AgentSession", namespace, name
        )

    @kopf.on.validate(
        GROUP,
        VERSION,
        "modeldeployments",
        id=VALIDATE_MODEL,
        operations=OPERATIONS,
        registry=registry,
    )
    def validate_model(
        spec: Any, namespace: str | None, name: str | None, operation: str | None = None, **kw: Any
    ) -> None:
        facts = _facts(namespace, operation, kw, "")
        parsed = _parse(ModelDeploymentSpec, spec, "ModelDeployment")
        _reject(
            admission.validate_model(parsed, config(), facts), "ModelDeployment", namespace, name
        )

    @kopf.on.mutate(
        GROUP, VERSION, "sandboxes", id=DEFAULT_SANDBOX, operations=OPERATIONS, registry=registry
    )
    def default_sandbox(spec: Any, patch: kopf.Patch, old: Any = None, **_: Any) -> None:
        old_spec = (old or {}).get("spec")
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
    def default_session(spec: Any, patch: kopf.Patch, old: Any = None, **_: Any) -> None:
        template = spec.get("sandboxTemplate")
        if not isinstance(template, dict):
            return
        old_template = ((old or {}).get("spec") or {}).get("sandboxTemplate")
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
    def default_model(spec: Any, patch: kopf.Patch, old: Any = None, **_: Any) -> None:
        old_spec = (old or {}).get("spec")
        changes = admission.model_spec_defaults(dict(spec), old_spec, config())
        if changes:
            patch["spec"] = changes
