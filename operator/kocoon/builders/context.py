"""What the builders need besides the Sandbox itself: its identity and the cluster's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from kocoon.kube.resources import API_VERSION

# The operator configuration's defaults (config.py reads them from here, so each is written once).
DEFAULT_RUNTIME_CLASS = "kata"
DEFAULT_GPU_RUNTIME_CLASS = "kata-qemu-nvidia-gpu"
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
class EngineImages:
    """The image each model engine runs when `engine.image` is empty."""

    vllm: str = "vllm/vllm-openai:v0.11.0"
    sglang: str = "lmsysorg/sglang:v0.5.9"
    trtllm: str = "nvcr.io/nvidia/tensorrt-llm/release:1.0.0"
    # llama-server alone, built for the dev cluster's node by the project's setup.
    llamacpp: str = "kocoon.local/llamacpp:local"


@dataclass(frozen=True)
class BuildSettings:
    """The operator configuration the builders read."""

    default_runtime_class: str = DEFAULT_RUNTIME_CLASS
    # For pods with a GPU that name no runtime class; default_runtime_class when None.
    default_gpu_runtime_class: str | None = DEFAULT_GPU_RUNTIME_CLASS
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
    # The operator's podHardening: run as non-root (runAsNonRoot, a non-root user and group).
    # Off, the image's user applies; no privilege, escalation or capability is granted either way.
    pod_hardening: bool = True
    # What a wake pod's container runs until the node agent restores the checkpoint beside
    # it: nothing, and it stops at once when the pod is deleted.
    restore_hold_command: tuple[str, ...] = DEFAULT_RESTORE_HOLD_COMMAND
    # --- model replicas (ModelDeployment) ---
    engine_images: EngineImages = field(default_factory=EngineImages)
    # Pull policy of `oci://` model images, mounted as image volumes.
    model_image_pull_policy: str = "IfNotPresent"
    # Downloads `s3://` sources (the AWS CLI's own image; `aws s3 cp`).
    s3_download_image: str = "amazon/aws-cli:2.17.0"
    # Downloads `hf://` sources with huggingface_hub; None: the engine's image (vLLM, SGLang
    # and TensorRT-LLM images ship it; llama-server's does not, so set one for llamacpp).
    hf_download_image: str | None = None
    # How long an engine may take to load its weights before it counts as failed.
    engine_startup_seconds: int = 1800
    # Pause before SIGTERM so the router stops sending, then the grace to finish requests.
    engine_drain_seconds: int = 5
    gpu_engine_grace_seconds: int = 120
    cpu_engine_grace_seconds: int = 30
    # Share of GPU memory an engine takes; less on time-sliced GPUs, which others share.
    gpu_memory_fraction: float = 0.9
    shared_gpu_memory_fraction: float = 0.45
    # Memory-backed /dev/shm for GPU engines.
    engine_shm_size: str = "2Gi"
    # llama-server: context tokens per slot, and at most this many slots.
    llamacpp_context_per_slot: int = 2048
    llamacpp_max_parallel: int = 4
    # Pods allowed to call an engine's sleep and wake endpoints: the operator's, in the
    # release namespace (router_namespace).
    operator_pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/component": "operator"}
    )
