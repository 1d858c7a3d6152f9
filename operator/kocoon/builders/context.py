"""What the builders need besides the Sandbox itself: its identity and the cluster's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from kocoon.kube.resources import API_VERSION

DEFAULT_RESTORE_HOLD_COMMAND = (
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
)


@dataclass(frozen=True)
class Identity:
    """The Sandbox an object belongs to (its owner)."""

    name: str
    namespace: str
    uid: str
    kind: str = "Sandbox"
    api_version: str = API_VERSION


@dataclass(frozen=True)
class GpuResourceNames:
    """Extended-resource names the cluster's device plugins advertise, per slice mode."""

    whole: str = "nvidia.com/gpu"
    mig_prefix: str = "nvidia.com/mig-"
    time_sliced: str = "nvidia.com/gpu.shared"
    hami_memory: str = "nvidia.com/gpumem"
    hami_cores: str = "nvidia.com/gpucores"


@dataclass(frozen=True)
class BuildSettings:
    """The operator configuration the builders read."""

    default_runtime_class: str = "kata"
    # For pods with a GPU that name no runtime class; default_runtime_class when None.
    default_gpu_runtime_class: str | None = "kata-qemu-nvidia-gpu"
    cluster_domain: str = "cluster.local"
    # Pods allowed to reach sandboxes: the router's, in the operator's release namespace.
    router_namespace: str = "kocoon-system"
    router_pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/component": "router"}
    )
    dns_namespace: str = "kube-system"
    dns_pod_labels: dict[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    gpu: GpuResourceNames = field(default_factory=GpuResourceNames)
    run_as_user: int = 65532
    # What a wake pod's container runs until the node agent restores the checkpoint beside
    # it: nothing, and it stops at once when the pod is deleted.
    restore_hold_command: tuple[str, ...] = DEFAULT_RESTORE_HOLD_COMMAND
