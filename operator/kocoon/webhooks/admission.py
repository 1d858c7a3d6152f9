"""Admission decisions that CEL cannot make, as pure functions of (object, configuration, facts).

Validation returns every problem at once, each naming the field and the fix. Defaulting
returns a merge patch for the fields whose defaults depend on the operator's configuration.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from kocoon import defaults
from kocoon.api.common import GpuSlice
from kocoon.api.model import ModelDeploymentSpec
from kocoon.api.sandbox import Hibernation, SandboxSpec, SecurityContext
from kocoon.api.session import AgentSessionSpec
from kocoon.config import OperatorConfig

MergePatch = dict[str, Any]


@dataclass(frozen=True)
class ClusterFacts:
    """What the webhook knows about the cluster when it decides.

    `runtime_classes` is None when the RuntimeClasses have not been observed (then only the
    configuration is checked); `objects_in_namespace` counts objects of the same kind;
    `mig_profiles_on_nodes` are the MIG profiles the nodes advertise (None: not observed).
    """

    namespace: str
    creating: bool
    runtime_classes: Collection[str] | None = None
    objects_in_namespace: int = 0
    mig_profiles_on_nodes: Collection[str] | None = None


def effective_runtime_class(
    runtime_class_name: str | None, gpu: GpuSlice | None, config: OperatorConfig
) -> str:
    return defaults.runtime_class_for(runtime_class_name, gpu is not None, config)


def runtime_class_problems(
    runtime_class: str, field: str, config: OperatorConfig, facts: ClusterFacts
) -> list[str]:
    problems = []
    if runtime_class not in config.runtime_classes:
        problems.append(
            f"{field}: runtime class {runtime_class!r} is not offered by this cluster;"
            f" use one of {config.runtime_classes}"
        )
    elif facts.runtime_classes is not None and runtime_class not in facts.runtime_classes:
        problems.append(
            f"{field}: RuntimeClass {runtime_class!r} does not exist in the cluster;"
            " create it (see gpu/) or use another runtime class"
        )
    limits = config.limits_for(facts.namespace)
    allowed = limits.allowed_runtime_classes if limits else None
    if allowed is not None and runtime_class not in allowed:
        problems.append(
            f"{field}: runtime class {runtime_class!r} is not allowed in namespace"
            f" {facts.namespace}; use one of {allowed}"
        )
    return problems


def gpu_problems(
    gpu: GpuSlice | None, field: str, config: OperatorConfig, facts: ClusterFacts
) -> list[str]:
    if gpu is None:
        return []
    problems = []
    if gpu.mode not in config.gpu_modes:
        problems.append(
            f"{field}.mode: GPU slice mode {gpu.mode!r} is not offered by this cluster;"
            f" use one of {config.gpu_modes}"
        )
    if gpu.mode == "mig" and config.mig_profiles and gpu.profile not in config.mig_profiles:
        problems.append(
            f"{field}.profile: MIG profile {gpu.profile!r} is not offered by this cluster;"
            f" use one of {config.mig_profiles}"
        )
    elif gpu.mode == "mig" and not config.mig_profiles and facts.mig_profiles_on_nodes:
        offered = sorted(facts.mig_profiles_on_nodes)
        if gpu.profile not in offered:
            problems.append(
                f"{field}.profile: no node offers MIG profile {gpu.profile!r}; the nodes offer"
                f" {offered} (or list the profiles the cluster will offer in migProfiles)"
            )
    limits = config.limits_for(facts.namespace)
    if limits and limits.max_gpus_per_object is not None and gpu.count > limits.max_gpus_per_object:
        problems.append(
            f"{field}.count: {gpu.count} exceeds the limit of {limits.max_gpus_per_object}"
            f" GPUs per object in namespace {facts.namespace}"
        )
    return problems


def memory_checkpoint_problems(
    runtime_class: str, gpu: GpuSlice | None, field: str, what: str, config: OperatorConfig
) -> list[str]:
    """Why a memory checkpoint of this pod cannot work, if it cannot."""
    problems = []
    if not defaults.runtime_can_checkpoint_memory(runtime_class, config):
        problems.append(
            f"{field}: {what} inside runtime class {runtime_class!r} needs a VM-snapshot driver"
            " and none is configured for it (vmSnapshotRuntimeClasses); use filesystem"
            f" hibernation or a runtime class that can checkpoint memory"
            f" ({config.memory_checkpoint_runtime_classes})"
        )
    if gpu is not None and not defaults.gpu_can_checkpoint_memory(runtime_class, gpu, config):
        problems.append(
            f"{field}: {what} with a GPU (mode {gpu.mode}) cannot work: GPU memory can be"
            " checkpointed only for whole GPUs under the runtime classes in"
            " gpuMemoryCheckpointRuntimeClasses"
            f" ({config.gpu_memory_checkpoint_runtime_classes});"
            " use filesystem hibernation"
        )
    return problems


def hardening_problems(
    security: SecurityContext | None, field: str, config: OperatorConfig
) -> list[str]:
    if not config.pod_hardening or security is None:
        return []
    problems = []
    if security.run_as_non_root is False:
        problems.append(
            f"{field}.runAsNonRoot: must not be false, sandboxes run as non-root;"
            " remove the field or set it to true"
        )
    if security.run_as_user == 0:
        problems.append(f"{field}.runAsUser: must not be 0 (root); use a non-root user ID")
    return problems


def sandbox_spec_problems(
    spec: SandboxSpec,
    field: str,
    config: OperatorConfig,
    facts: ClusterFacts,
    hibernation: Hibernation | None = None,
    hibernation_field: str | None = None,
) -> list[str]:
    """Problems of a Sandbox spec (or an AgentSession's template, with its own hibernation)."""
    runtime_class = effective_runtime_class(spec.runtime_class_name, spec.gpu, config)
    problems = runtime_class_problems(runtime_class, f"{field}.runtimeClassName", config, facts)
    problems += gpu_problems(spec.gpu, f"{field}.gpu", config, facts)
    problems += hardening_problems(
        spec.template.security_context, f"{field}.template.securityContext", config
    )
    mode = hibernation or spec.hibernation
    if mode == "memory":
        problems += memory_checkpoint_problems(
            runtime_class,
            spec.gpu,
            hibernation_field or f"{field}.hibernation",
            "memory hibernation",
            config,
        )
    limits = config.limits_for(facts.namespace)
    largest = limits.max_workspace_size if limits else None
    if (
        largest is not None
        and spec.workspace is not None
        and spec.workspace.size.value > largest.value
    ):
        problems.append(
            f"{field}.workspace.size: {spec.workspace.size} exceeds the limit of"
            f" {largest} in namespace {facts.namespace}"
        )
    return problems


def new_problems(problems: list[str], before: list[str]) -> list[str]:
    """On update: only the problems the update brings. One the old object already had (the
    configuration or the cluster changed since it was admitted) is not the update's to fix."""
    had = set(before)
    return [problem for problem in problems if problem not in had]


def _count_problem(kind: str, limit: int | None, facts: ClusterFacts) -> list[str]:
    if limit is None or not facts.creating or facts.objects_in_namespace < limit:
        return []
    return [
        f"metadata.namespace: namespace {facts.namespace} already has"
        f" {facts.objects_in_namespace} {kind} (limit {limit}); delete one first"
    ]


def validate_sandbox(spec: SandboxSpec, config: OperatorConfig, facts: ClusterFacts) -> list[str]:
    limits = config.limits_for(facts.namespace)
    problems = _count_problem("Sandboxes", limits.max_sandboxes if limits else None, facts)
    return problems + sandbox_spec_problems(spec, "spec", config, facts)


def validate_session(
    spec: AgentSessionSpec, config: OperatorConfig, facts: ClusterFacts
) -> list[str]:
    limits = config.limits_for(facts.namespace)
    problems = _count_problem("AgentSessions", limits.max_sessions if limits else None, facts)
    return problems + sandbox_spec_problems(
        spec.sandbox_template,
        "spec.sandboxTemplate",
        config,
        facts,
        hibernation=spec.hibernation,
        hibernation_field="spec.hibernation" if spec.hibernation else None,
    )


def validate_model(
    spec: ModelDeploymentSpec, config: OperatorConfig, facts: ClusterFacts
) -> list[str]:
    runtime_class = effective_runtime_class(spec.runtime_class_name, spec.gpu, config)
    problems = runtime_class_problems(runtime_class, "spec.runtimeClassName", config, facts)
    problems += gpu_problems(spec.gpu, "spec.gpu", config, facts)
    return problems + model_problems(spec, runtime_class, config, facts)


def model_problems(
    spec: ModelDeploymentSpec, runtime_class: str, config: OperatorConfig, facts: ClusterFacts
) -> list[str]:
    """The ModelDeployment's own rules: a source the operator can read, a scale within the
    namespace's limits, a wake strategy that can work with its engine, runtime and GPU."""
    problems = []
    scheme = spec.model.scheme
    if scheme not in config.model_sources:
        readable = [f"{name}://" for name in config.model_sources]
        problems.append(
            f"spec.model.uri: {scheme}:// sources cannot be read in this cluster"
            f" (modelSources); use one of {readable}"
        )
    limits = config.limits_for(facts.namespace)
    most = spec.scaling.max_replicas
    if limits and limits.max_model_replicas is not None and most > limits.max_model_replicas:
        problems.append(
            f"spec.scaling.maxReplicas: {most} exceeds the limit of {limits.max_model_replicas}"
            f" replicas per ModelDeployment in namespace {facts.namespace}"
        )
    if limits and limits.max_gpus_per_model is not None and spec.gpu is not None:
        gpus = most * spec.gpu.count
        if gpus > limits.max_gpus_per_model:
            problems.append(
                f"spec.scaling.maxReplicas: {most} replicas of {spec.gpu.count} GPU(s) each"
                f" hold up to {gpus} GPUs, above the limit of {limits.max_gpus_per_model} per"
                f" ModelDeployment in namespace {facts.namespace}; lower maxReplicas or gpu.count"
            )
    if spec.wake_strategy == "checkpoint":
        problems += memory_checkpoint_problems(
            runtime_class,
            spec.gpu,
            "spec.wakeStrategy",
            f"waking {spec.engine.type} from a checkpoint",
            config,
        )
    return problems


# --- defaults -------------------------------------------------------------------------------


def sandbox_spec_defaults(
    spec: dict[str, Any],
    old_spec: dict[str, Any] | None,
    config: OperatorConfig,
    session_hibernation: str | None = None,
) -> MergePatch:
    """Defaults for a Sandbox spec (as sent, camelCase) that depend on the configuration.

    On update, a runtime class or hibernation the new spec omits keeps its old value, so that
    `kubectl replace` of a manifest without it neither trips the immutability rule nor changes
    the mode under a newer configuration.
    """
    patch: MergePatch = {}
    gpu = _gpu_or_none(spec.get("gpu"))
    runtime_class = _runtime_class_default(spec, old_spec, config)
    if "runtimeClassName" not in spec:
        patch["runtimeClassName"] = runtime_class
    if "hibernation" not in spec and session_hibernation is None:
        previous = (old_spec or {}).get("hibernation")
        if isinstance(previous, str):
            # As decided at create: a later configuration must not change how it hibernates.
            patch["hibernation"] = previous
        else:
            has_workspace = isinstance(spec.get("workspace"), dict)
            patch["hibernation"] = defaults.default_hibernation(
                runtime_class, gpu, has_workspace, config
            )
    template = spec.get("template")
    if config.pod_hardening and isinstance(template, dict):
        security = template.get("securityContext", {})
        if isinstance(security, dict) and "runAsNonRoot" not in security:
            patch["template"] = {"securityContext": {"runAsNonRoot": True}}
    return patch


def _runtime_class_default(
    spec: dict[str, Any], old_spec: dict[str, Any] | None, config: OperatorConfig
) -> str:
    """The runtime class as set, else as it was before this update, else the configured one.

    A value of the wrong type is kept as it is, for schema validation to report.
    """
    for source in (spec, old_spec or {}):
        value = source.get("runtimeClassName")
        if isinstance(value, str) and value:
            return value
    return defaults.runtime_class_for(None, "gpu" in spec, config)


def _gpu_or_none(raw: Any) -> GpuSlice | None:
    """The GPU slice if it is valid; an invalid one is left for validation to report."""
    try:
        return GpuSlice.model_validate(raw) if isinstance(raw, dict) else None
    except ValueError:
        return None


def model_spec_defaults(
    spec: dict[str, Any], old_spec: dict[str, Any] | None, config: OperatorConfig
) -> MergePatch:
    if "runtimeClassName" in spec:
        return {}
    return {"runtimeClassName": _runtime_class_default(spec, old_spec, config)}
