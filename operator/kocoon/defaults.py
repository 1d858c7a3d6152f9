"""The defaults that depend on the operator's configuration, decided in one place.

Admission (the mutating webhook), the lifecycle and the builders all ask here, so an object
behaves the same whether or not the webhook was in its path. Pure: no I/O, no kopf.

`HIBERNATION_RULE` is the rule in words; docs/lifecycle.md quotes it and a unit test keeps the
two (and the rule itself) in step.
"""

from __future__ import annotations

from typing import Protocol

from kocoon.api.common import GpuSlice
from kocoon.api.sandbox import Hibernation, SandboxSpec
from kocoon.config import OperatorConfig

HIBERNATION_RULE = (
    "When `hibernation` is empty, the operator uses `memory` where the runtime class can"
    " checkpoint memory (`runc`; Kata only with a VM-snapshot driver) and the pod has no GPU"
    " that runtime class cannot checkpoint (only whole GPUs under"
    " `gpuMemoryCheckpointRuntimeClasses`), else `filesystem` when there is a workspace,"
    " else `none`."
)


class RuntimeDefaults(Protocol):
    """What the runtime-class default reads: the operator's configuration or the builders'
    settings, which copy it."""

    @property
    def default_runtime_class(self) -> str: ...

    @property
    def default_gpu_runtime_class(self) -> str | None: ...


def runtime_class_for(
    spec_runtime_class: str | None, has_gpu: bool, config: RuntimeDefaults
) -> str:
    """The runtime class a pod runs under: the one the spec names, else the configured default,
    which for a pod with a GPU is `defaultGpuRuntimeClass` (when set)."""
    if spec_runtime_class:
        return spec_runtime_class
    if has_gpu and config.default_gpu_runtime_class is not None:
        return config.default_gpu_runtime_class
    return config.default_runtime_class


def runtime_can_checkpoint_memory(runtime_class: str, config: OperatorConfig) -> bool:
    """Whether the runtime class can checkpoint a pod's memory (CRIU, or a VM snapshot)."""
    return config.can_checkpoint_memory(runtime_class)


def gpu_can_checkpoint_memory(
    runtime_class: str, gpu: GpuSlice | None, config: OperatorConfig
) -> bool:
    """Whether the pod's GPU (if any) can be checkpointed with its memory: only whole GPUs,
    under the runtime classes configured for it."""
    if gpu is None:
        return True
    return gpu.mode == "wholeGPU" and runtime_class in config.gpu_memory_checkpoint_runtime_classes


def memory_hibernation_works(
    runtime_class: str, gpu: GpuSlice | None, config: OperatorConfig
) -> bool:
    return runtime_can_checkpoint_memory(runtime_class, config) and gpu_can_checkpoint_memory(
        runtime_class, gpu, config
    )


def default_hibernation(
    runtime_class: str, gpu: GpuSlice | None, has_workspace: bool, config: OperatorConfig
) -> Hibernation:
    """HIBERNATION_RULE, given the effective runtime class."""
    if memory_hibernation_works(runtime_class, gpu, config):
        return "memory"
    return "filesystem" if has_workspace else "none"


def effective_hibernation(spec: SandboxSpec, config: OperatorConfig) -> Hibernation:
    """How the Sandbox hibernates: `spec.hibernation` when set, else HIBERNATION_RULE."""
    if spec.hibernation is not None:
        return spec.hibernation
    runtime_class = runtime_class_for(spec.runtime_class_name, spec.gpu is not None, config)
    return default_hibernation(runtime_class, spec.gpu, spec.workspace is not None, config)


def hibernation_rule() -> str:
    """The hibernation default in words, as the docs quote it."""
    return HIBERNATION_RULE
