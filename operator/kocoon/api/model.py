"""ModelDeployment: a serverless, OpenAI-compatible model endpoint on GPU slices."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.config import JsonValue

from kocoon.api.common import (
    Conditions,
    DnsSubdomain,
    Duration,
    GpuSlice,
    KocoonModel,
    LocalObjectReference,
    ObjectMeta,
    PositiveQuantity,
    SecretKeyReference,
    cel,
    immutable,
    list_map,
)
from kocoon.api.conditions import ModelPhase
from kocoon.api.sandbox import Checkpoint, EnvVar, Resources

MODEL_URI_PATTERN = r"^(hf|pvc|s3|oci)://[^\s]+$"
# One shape per scheme; the CEL rules and the pydantic validator below use the same patterns.
PVC_URI_PATTERN = (
    r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(/[^\s]*)?$"
)
S3_URI_PATTERN = r"^s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/[^\s]*)?$"
HF_URI_PATTERN = r"^hf://[A-Za-z0-9][-._A-Za-z0-9]*/[A-Za-z0-9][-._A-Za-z0-9]*$"
OCI_URI_PATTERN = r"^oci://[a-z0-9][^\s]*$"
URI_SHAPES: tuple[tuple[str, str, str], ...] = (
    ("pvc://", PVC_URI_PATTERN, "pvc://<claim>/<path>, <claim> naming a PersistentVolumeClaim"),
    ("s3://", S3_URI_PATTERN, "s3://<bucket>/<key>, or s3://<bucket>/<prefix>/ for a directory"),
    ("hf://", HF_URI_PATTERN, "hf://<org>/<name>"),
    ("oci://", OCI_URI_PATTERN, "oci://<image reference>, e.g. oci://registry.example/m:v1"),
)
RELATIVE_PATH_PATTERN = r"^[^/\s][^\s]*$"
S3_ENDPOINT_PATTERN = r"^https?://[^\s/?#]+/?$"
Engine = Literal["vllm", "sglang", "trtllm", "llamacpp"]
WakeStrategy = Literal["engineSleep", "checkpoint", "coldStart"]
# Engines with a sleep mode `engineSleep` can use (vLLM and SGLang free GPU memory and keep
# the weights in host memory; llama-server unloads the model when idle).
SLEEP_ENGINES: tuple[str, ...] = ("vllm", "sglang", "llamacpp")
# The keys an S3 credentials Secret holds (the AWS SDKs' own variable names).
S3_ACCESS_KEY_ID_KEY = "AWS_ACCESS_KEY_ID"
S3_SECRET_ACCESS_KEY_KEY = "AWS_SECRET_ACCESS_KEY"


class S3Source(KocoonModel):
    """Where an `s3://` source is served and the credentials to read it."""

    endpoint: Annotated[str, Field(pattern=S3_ENDPOINT_PATTERN, max_length=512)]
    """Base URL of the S3-compatible API, e.g. `https://s3.us-east-1.amazonaws.com` or
    `http://minio.storage:9000`."""
    region: Annotated[str, Field(pattern=r"^[a-z0-9][-a-z0-9]*$", max_length=64)] = "us-east-1"
    """Region of the bucket."""
    credentials_secret_ref: LocalObjectReference
    """A Secret in the deployment's namespace with the keys `AWS_ACCESS_KEY_ID` and
    `AWS_SECRET_ACCESS_KEY`."""


class HuggingFaceSource(KocoonModel):
    """Access to an `hf://` source."""

    token_secret_ref: SecretKeyReference | None = None
    """A Secret key holding a Hugging Face access token, for gated or private models."""


def _source_rules() -> list[JsonValue]:
    rules: list[JsonValue] = [immutable("uri")]
    for scheme, pattern, shape in URI_SHAPES:
        rules.append(
            cel(
                f"!self.uri.startsWith('{scheme}') || self.uri.matches(r'{pattern}')",
                f"uri: write {shape}",
                ".uri",
            )
        )
    rules += [
        cel(
            "self.uri.startsWith('s3://') == has(self.s3)",
            "s3 (endpoint and credentialsSecretRef) is required for s3:// sources and only"
            " allowed there",
            ".s3",
        ),
        cel(
            "!has(self.hf) || self.uri.startsWith('hf://')",
            "hf is only allowed for hf:// sources",
            ".hf",
        ),
        cel(
            "!has(self.revision) || self.uri.startsWith('hf://')",
            "revision is only allowed for hf:// sources",
            ".revision",
        ),
        cel(
            "!has(self.path) || !self.path.split('/').exists(p, p == '..')",
            "path must stay inside the source: no '..'",
            ".path",
        ),
    ]
    return rules


class ModelSource(KocoonModel):
    """Where the weights come from. The engine reads them, read-only, under a fixed path."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _source_rules()})

    uri: Annotated[str, Field(pattern=MODEL_URI_PATTERN, max_length=1024)]
    """Location of the model: `pvc://claim/path` (a PersistentVolumeClaim in the namespace),
    `s3://bucket/key` (`s3://bucket/prefix/` for a directory; needs `s3`), `oci://image` (an
    image holding the weights, mounted as an image volume) or `hf://org/name` (downloaded from
    Hugging Face into the cache). Immutable."""
    path: Annotated[str, Field(pattern=RELATIVE_PATH_PATTERN, max_length=1024)] | None = None
    """File or directory inside the source the engine loads, e.g. `models/model.gguf` in an
    `oci://` image; the source's root when empty. llama.cpp loads a single GGUF file."""
    revision: Annotated[str, Field(pattern=r"^[-._/A-Za-z0-9]+$", max_length=128)] | None = None
    """Revision (branch, tag or commit) for `hf://` sources; pin a commit for reproducible wakes."""
    s3: S3Source | None = None
    """Endpoint and credentials of an `s3://` source. Required for `s3://`."""
    hf: HuggingFaceSource | None = None
    """Access token of an `hf://` source."""

    @model_validator(mode="after")
    def _fits_scheme(self) -> ModelSource:
        for scheme, pattern, shape in URI_SHAPES:
            if self.uri.startswith(scheme) and not re.fullmatch(pattern, self.uri):
                raise ValueError(f"model.uri: write {shape}")
        is_s3 = self.uri.startswith("s3://")
        if is_s3 != (self.s3 is not None):
            raise ValueError(
                "model.s3 (endpoint and credentialsSecretRef) is required for s3:// sources"
                " and only allowed there"
            )
        if not self.uri.startswith("hf://"):
            if self.hf is not None:
                raise ValueError("model.hf is only allowed for hf:// sources")
            if self.revision is not None:
                raise ValueError("model.revision is only allowed for hf:// sources")
        if self.path is not None and ".." in self.path.split("/"):
            raise ValueError("model.path must stay inside the source: no '..'")
        return self

    @property
    def scheme(self) -> str:
        """`pvc`, `s3`, `oci` or `hf`."""
        return self.uri.split("://", 1)[0]

    @property
    def location(self) -> str:
        """The URI without its scheme: `claim/path`, `bucket/key`, the image, `org/name`."""
        return self.uri.split("://", 1)[1]


class ModelCache(KocoonModel):
    """A volume caching the weights so replicas and wakes do not download them again."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [immutable("storageClassName")]}
    )

    size: PositiveQuantity
    """Capacity of the cache volume, e.g. `100Gi`."""
    storage_class_name: DnsSubdomain | None = None
    """StorageClass of the cache volume; the cluster's default when empty. Immutable."""


class EngineSpec(KocoonModel):
    """The inference engine serving the model."""

    type: Engine
    """Engine: `vllm`, `sglang`, `trtllm` (GPU) or `llamacpp` (llama.cpp's `llama-server`, CPU)."""
    image: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")] | None = None
    """Engine image; the operator's default for the engine when empty."""
    args: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=128)] = []
    """Extra arguments to the engine (e.g. `--max-model-len=8192`)."""
    env: Annotated[list[EnvVar], Field(max_length=128, json_schema_extra=list_map("name"))] = []
    """Environment variables of the engine."""


class Scaling(KocoonModel):
    """How many replicas, driven by concurrent requests seen at the router."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.minReplicas <= self.maxReplicas",
                    "minReplicas must not exceed maxReplicas",
                    ".minReplicas",
                )
            ]
        }
    )

    min_replicas: Annotated[int, Field(ge=0, le=1000)] = 0
    """Fewest replicas; 0 scales to zero when idle (requests are held while it wakes)."""
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    """Most replicas."""
    target_concurrency: Annotated[int, Field(ge=1, le=100000)] = 8
    """In-flight requests per replica the autoscaler aims for."""
    scale_down_delay: Duration = Field(
        default_factory=lambda: Duration.parse("5m"), json_schema_extra={"default": "5m"}
    )
    """How long demand must stay lower before scaling down (and to zero), e.g. `5m`."""

    @model_validator(mode="after")
    def _ordered(self) -> Scaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("scaling.minReplicas must not exceed scaling.maxReplicas")
        return self


class Route(KocoonModel):
    """The OpenAI-compatible route through the router."""

    served_model_name: (
        Annotated[str, Field(pattern=r"^[A-Za-z0-9][-._/:A-Za-z0-9]*$", max_length=253)] | None
    ) = None
    """Model name clients send in `model`; the ModelDeployment's name when empty."""


def _deployment_rules() -> list[JsonValue]:
    return [
        cel(
            "!has(self.replicas) || (self.replicas <= self.scaling.maxReplicas)",
            "replicas must not exceed scaling.maxReplicas",
            ".replicas",
        ),
        cel(
            "!has(oldSelf.gpu) || !has(self.gpu) || self.gpu.mode == oldSelf.gpu.mode",
            "gpu.mode is immutable: delete and recreate the ModelDeployment to change it",
            ".gpu.mode",
        ),
        cel(
            "self.wakeStrategy != 'engineSleep' || self.engine.type in "
            + "["
            + ", ".join(f"'{engine}'" for engine in SLEEP_ENGINES)
            + "]",
            "wakeStrategy engineSleep needs an engine with a sleep mode (vllm, sglang or"
            " llamacpp); use checkpoint or coldStart",
            ".wakeStrategy",
        ),
    ]


class ModelDeploymentSpec(KocoonModel):
    """A model served on GPU slices that scales to zero and wakes on the next request."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _deployment_rules()})

    model: ModelSource
    """Where the weights come from."""
    cache: ModelCache | None = None
    """A volume caching the weights; none (download on every start) when empty."""
    engine: EngineSpec
    """The inference engine and its arguments."""
    gpu: GpuSlice | None = None
    """The GPU slice of each replica."""
    resources: Resources | None = None
    """CPU and memory of each replica."""
    runtime_class_name: DnsSubdomain | None = None
    """RuntimeClass of the replicas; the operator's default when empty."""
    replicas: Annotated[int, Field(ge=0, le=1000)] | None = None
    """Desired replicas, written through the scale subresource by an autoscaler; the built-in
    autoscaler (`scaling`) decides when empty."""
    scaling: Scaling = Field(
        default_factory=Scaling,
        # In full: the API server checks CEL rules against the default before nested defaulting.
        json_schema_extra={
            "default": {
                "minReplicas": 0,
                "maxReplicas": 1,
                "targetConcurrency": 8,
                "scaleDownDelay": "5m",
            }
        },
    )
    """Replica bounds and the autoscaler's target."""
    wake_strategy: WakeStrategy = "coldStart"
    """How a replica wakes: `engineSleep` (the engine's sleep mode: vLLM and SGLang free GPU
    memory and keep the weights in host memory, llama-server unloads the model when idle; not
    trtllm), `checkpoint` (restore a CRIU checkpoint of a loaded engine; on GPUs the node needs
    cuda-checkpoint, reported as a condition) or `coldStart` (start the engine and load the
    weights)."""
    route: Route = Field(default_factory=Route, json_schema_extra={"default": {}})
    """The OpenAI-compatible route through the router."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ModelDeploymentSpec:
        if self.replicas is not None and self.replicas > self.scaling.max_replicas:
            raise ValueError("replicas must not exceed scaling.maxReplicas")
        if self.wake_strategy == "engineSleep" and self.engine.type not in SLEEP_ENGINES:
            raise ValueError(
                "wakeStrategy engineSleep needs an engine with a sleep mode (vllm, sglang or"
                " llamacpp); use checkpoint or coldStart"
            )
        return self


class Backend(KocoonModel):
    """One replica as the router sees it."""

    pod: str
    """Name of the replica's pod."""
    address: Annotated[str, Field(max_length=128)]
    """`ip:port` of the engine (`[ip]:port` for IPv6)."""
    ready: bool = False
    """The engine answers its readiness check."""
    sleeping: bool = False
    """The engine is asleep (`engineSleep`): the router sends it no request."""


class ModelUsage(KocoonModel):
    """Accumulated replica time, for metering."""

    replica_seconds: Annotated[float, Field(ge=0)] = 0
    """Seconds of replica pods running, summed over replicas."""
    gpu_seconds: Annotated[float, Field(ge=0)] = 0
    """Replica seconds times the replica's GPU slice count."""
    wake_count: Annotated[int, Field(ge=0)] = 0
    """Number of wakes from zero."""
    accounted_until: datetime | None = None
    """The moment up to which the seconds above are counted."""


class ModelDeploymentStatus(KocoonModel):
    """What the operator observes about the deployment. Written only by the operator."""

    phase: ModelPhase | None = None
    """Pending, Loading, Ready, ScaledToZero, Waking or Failed."""
    conditions: Conditions = []
    """Ready, PodScheduled, ModelSourceReady, ModelCached, WakeStrategyAvailable, each with a
    reason."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `.metadata.generation` the status reflects."""
    replicas: Annotated[int, Field(ge=0)] = 0
    """Current replicas (the scale subresource's status)."""
    ready_replicas: Annotated[int, Field(ge=0)] = 0
    """Replicas ready to serve."""
    selector: str | None = None
    """Label selector of the replicas' pods, for the scale subresource."""
    served_model_name: str | None = None
    """The name clients send in `model`: `route.servedModelName`, else the deployment's name."""
    backends: Annotated[
        list[Backend], Field(max_length=1000, json_schema_extra=list_map("pod"))
    ] = []
    """The replicas the router may send requests to, with their state."""
    endpoint: str | None = None
    """OpenAI-compatible base URL through the router."""
    last_activity_time: datetime | None = None
    """Last request seen by the router."""
    last_wake_latency_seconds: Annotated[float, Field(ge=0)] | None = None
    """From the wake decision to the first ready replica, for the last wake from zero."""
    usage: ModelUsage | None = None
    """Replica time and GPU time, for metering."""
    phase_since: datetime | None = None
    """When the deployment entered its current phase (a wake's latency counts from Waking)."""
    desired_replicas: Annotated[int, Field(ge=0)] | None = None
    """Replicas wanted now: `spec.replicas` when set, else the built-in autoscaler's count."""
    lower_demand_since: datetime | None = None
    """Since when demand has wanted fewer replicas than `desiredReplicas`; they scale down
    `scaling.scaleDownDelay` after it (and after the last request, to zero)."""
    restarts: Annotated[int, Field(ge=0)] | None = None
    """Failed or crash-looping replicas replaced in a row; at 3 the deployment is Failed until
    its spec changes."""
    checkpoint: Checkpoint | None = None
    """The memory checkpoint of a warm replica a `checkpoint` wake restores, if any."""


class ModelDeployment(KocoonModel):
    """A serverless model endpoint: GPU slices per replica, scale to zero, held requests on wake."""

    api_version: Literal["kocoon.io/v1alpha1"] = "kocoon.io/v1alpha1"
    """APIVersion of the object."""
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    """Kind of the object."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: ModelDeploymentSpec
    """Desired state."""
    status: ModelDeploymentStatus | None = None
    """Observed state."""
