"""ModelDeployment: a serverless, OpenAI-compatible model endpoint on GPU slices."""

from __future__ import annotations

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
    ObjectMeta,
    PositiveQuantity,
    cel,
    immutable,
    list_map,
)
from kocoon.api.conditions import ModelPhase
from kocoon.api.sandbox import EnvVar, Resources

MODEL_URI_PATTERN = r"^(hf|pvc|s3|gs|oci)://[^\s]+$"
Engine = Literal["vllm", "sglang", "trtllm"]
WakeStrategy = Literal["engineSleep", "checkpoint", "coldStart"]


class ModelSource(KocoonModel):
    """Where the weights come from."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [immutable("uri")]})

    uri: Annotated[str, Field(pattern=MODEL_URI_PATTERN, max_length=1024)]
    """Location of the model: `hf://org/name`, `pvc://claim/path`, `s3://bucket/path`,
    `gs://bucket/path` or `oci://image`. Immutable."""
    revision: Annotated[str, Field(pattern=r"^[-._/A-Za-z0-9]+$", max_length=128)] | None = None
    """Revision (branch, tag or commit) for `hf://` sources; pin a commit for reproducible wakes."""


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
    """Engine: `vllm`, `sglang` or `trtllm`."""
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
            "self.wakeStrategy != 'engineSleep' || self.engine.type != 'trtllm'",
            "wakeStrategy engineSleep needs an engine with a sleep mode (vllm or sglang)",
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
    """How a replica wakes from zero: `engineSleep` (the engine's sleep mode keeps weights in
    host memory), `checkpoint` (restore a CRIU checkpoint of a loaded engine) or `coldStart`
    (start the engine and load the weights)."""
    route: Route = Field(default_factory=Route, json_schema_extra={"default": {}})
    """The OpenAI-compatible route through the router."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ModelDeploymentSpec:
        if self.replicas is not None and self.replicas > self.scaling.max_replicas:
            raise ValueError("replicas must not exceed scaling.maxReplicas")
        if self.wake_strategy == "engineSleep" and self.engine.type == "trtllm":
            raise ValueError("wakeStrategy engineSleep needs an engine with a sleep mode")
        return self


class ModelDeploymentStatus(KocoonModel):
    """What the operator observes about the deployment. Written only by the operator."""

    phase: ModelPhase | None = None
    """Pending, Loading, Ready, ScaledToZero, Waking or Failed."""
    conditions: Conditions = []
    """Ready, ModelCached, each with a reason."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `.metadata.generation` the status reflects."""
    replicas: Annotated[int, Field(ge=0)] = 0
    """Current replicas (the scale subresource's status)."""
    ready_replicas: Annotated[int, Field(ge=0)] = 0
    """Replicas ready to serve."""
    selector: str | None = None
    """Label selector of the replicas' pods, for the scale subresource."""
    endpoint: str | None = None
    """OpenAI-compatible base URL through the router."""
    last_activity_time: datetime | None = None
    """Last request seen by the router."""
    last_wake_latency_seconds: Annotated[float, Field(ge=0)] | None = None
    """From the wake decision to the first ready replica, for the last wake from zero."""


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
