"""Operator and cluster configuration: what the cluster offers and the defaults that follow.

Loaded from a YAML file (`KOCOON_CONFIG`, or `--config`) and overridden by environment
variables `KOCOON_<FIELD>` (JSON for lists and maps, e.g. `KOCOON_GPU_MODES='["mig"]'`). The
defaults fit the local development cluster.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kocoon.api.common import DnsSubdomain, GpuMode, PositiveQuantity
from kocoon.builders.context import (
    DEFAULT_GPU_RUNTIME_CLASS,
    DEFAULT_RESTORE_HOLD_COMMAND,
    DEFAULT_RUNTIME_CLASS,
)

CONFIG_ENV = "KOCOON_CONFIG"
ENV_PREFIX = "KOCOON_"
# The schemes of ModelDeployment sources (`spec.model.uri`), as the API accepts them.
ModelSourceScheme = Literal["pvc", "s3", "oci", "hf"]


class NamespaceLimits(BaseModel):
    """Upper bounds for the objects of one namespace, checked at admission."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    max_sandboxes: Annotated[int, Field(ge=0)] | None = None
    """Most Sandboxes the namespace may hold."""
    max_sessions: Annotated[int, Field(ge=0)] | None = None
    """Most AgentSessions the namespace may hold."""
    max_gpus_per_object: Annotated[int, Field(ge=0)] | None = None
    """Largest `gpu.count` a single object may request."""
    max_workspace_size: PositiveQuantity | None = None
    """Largest workspace a Sandbox may request."""
    allowed_runtime_classes: list[DnsSubdomain] | None = None
    """Runtime classes the namespace may use; every configured one when unset."""
    max_model_replicas: Annotated[int, Field(ge=0)] | None = None
    """Largest `scaling.maxReplicas` a ModelDeployment may ask for."""
    max_gpus_per_model: Annotated[int, Field(ge=0)] | None = None
    """Most GPUs a ModelDeployment may hold at its largest: `scaling.maxReplicas` times
    `gpu.count`."""


class OperatorConfig(BaseModel):
    """Everything the operator needs to know about the cluster it runs in."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )

    default_runtime_class: DnsSubdomain = DEFAULT_RUNTIME_CLASS
    """RuntimeClass given to Sandboxes and ModelDeployments that name none."""
    default_gpu_runtime_class: DnsSubdomain | None = DEFAULT_GPU_RUNTIME_CLASS
    """RuntimeClass for objects with a GPU that name none; defaultRuntimeClass when unset."""
    runtime_classes: list[DnsSubdomain] = [DEFAULT_RUNTIME_CLASS, DEFAULT_GPU_RUNTIME_CLASS, "runc"]
    """RuntimeClasses that exist in the cluster and may be used."""
    memory_checkpoint_runtime_classes: list[DnsSubdomain] = ["runc"]
    """RuntimeClasses whose pods can be checkpointed with their memory (CRIU under runc/crun)."""
    vm_snapshot_runtime_classes: list[DnsSubdomain] = []
    """VM-based RuntimeClasses (Kata) with a VM-snapshot driver, so memory hibernation works."""
    gpu_memory_checkpoint_runtime_classes: list[DnsSubdomain] = []
    """RuntimeClasses where a whole GPU can be checkpointed with memory (CRIU's CUDA plugin and
    cuda-checkpoint on runc). Empty: memory hibernation with a GPU is refused."""
    gpu_modes: list[GpuMode] = ["wholeGPU", "mig", "timeSliced", "dra"]
    """GPU slice modes the cluster offers."""
    mig_profiles: list[str] = []
    """MIG profiles the cluster offers (e.g. `1g.10gb`). When empty, the profiles its nodes
    advertise (`nvidia.com/mig-<profile>`), if any node advertises one; set it where nodes
    come and go (autoscaling) so a profile is not refused while no node offers it."""
    model_sources: list[ModelSourceScheme] = ["pvc", "s3", "oci", "hf"]
    """Model source schemes ModelDeployments may use here: drop `oci` where the cluster has no
    image volumes, `hf` where replicas cannot reach Hugging Face, `s3` where no S3 endpoint is
    reachable."""
    namespace_limits: dict[str, NamespaceLimits] = {}
    """Per-namespace limits; the key `*` applies to namespaces not listed."""
    router_domain: str = "kocoon.localhost"
    """Domain under which the router serves sessions and models."""
    restore_hold_command: Annotated[list[str], Field(min_length=1)] = list(
        DEFAULT_RESTORE_HOLD_COMMAND
    )
    """What a wake pod's container runs while the node agent restores its checkpoint beside it
    (memory hibernation on containerd nodes). The image must have it; it should do nothing
    and exit on SIGTERM."""
    pod_hardening: bool = True
    """Run every sandbox as non-root: the pod gets runAsNonRoot and a non-root user, and a
    template cannot turn that off (admission refuses runAsNonRoot false and runAsUser 0; the
    pod builder ignores them). Off, the image's user applies. Either way no privilege,
    privilege escalation or capability is granted and seccomp is RuntimeDefault."""

    @model_validator(mode="after")
    def _default_exists(self) -> OperatorConfig:
        if self.default_runtime_class not in self.runtime_classes:
            raise ValueError(
                f"defaultRuntimeClass {self.default_runtime_class!r} is not in runtimeClasses"
                f" {self.runtime_classes}: add it there or pick one of them"
            )
        gpu_default = self.default_gpu_runtime_class
        if gpu_default is not None and gpu_default not in self.runtime_classes:
            raise ValueError(
                f"defaultGpuRuntimeClass {gpu_default!r} is not in runtimeClasses"
                f" {self.runtime_classes}: add it there or pick one of them"
            )
        return self

    def can_checkpoint_memory(self, runtime_class: str) -> bool:
        """Whether pods of this runtime class can hibernate with their memory."""
        return (
            runtime_class in self.memory_checkpoint_runtime_classes
            or runtime_class in self.vm_snapshot_runtime_classes
        )

    def limits_for(self, namespace: str) -> NamespaceLimits | None:
        return self.namespace_limits.get(namespace, self.namespace_limits.get("*"))


def load_config(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> OperatorConfig:
    """The configuration from `path` (or `$KOCOON_CONFIG`), with `KOCOON_<FIELD>` overrides."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = path or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    if source is not None:
        loaded = yaml.safe_load(source.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{source}: the configuration must be a YAML mapping")
        data.update(loaded)
    for name, info in OperatorConfig.model_fields.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        key = info.alias or name  # the file's spelling, so the override replaces it
        try:
            data[key] = json.loads(raw)
        except json.JSONDecodeError:
            data[key] = raw  # a plain string such as KOCOON_DEFAULT_RUNTIME_CLASS=runc
    return OperatorConfig.model_validate(data)
