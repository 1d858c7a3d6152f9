"""Sandbox: the physical runtime of a session — one strongly isolated pod that can hibernate."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator
from pydantic.config import JsonValue

from kocoon.api.common import (
    Conditions,
    DnsLabel,
    DnsSubdomain,
    GpuSlice,
    KocoonModel,
    ObjectMeta,
    Port,
    PositiveDuration,
    PositiveQuantity,
    SecretKeyReference,
    cel,
    immutable,
    list_map,
)
from kocoon.api.conditions import SandboxPhase

Hibernation = Literal["memory", "filesystem", "none"]
OperatingMode = Literal["Auto", "Running", "Hibernated"]
ShutdownPolicy = Literal["Delete", "Retain"]
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
ABSOLUTE_PATH_PATTERN = r"^/[^\x00]*$"
SET = {"x-kubernetes-list-type": "set"}


class EnvVarSource(KocoonModel):
    """Where an environment variable's value comes from when it is not written inline."""

    secret_key_ref: SecretKeyReference
    """A key of a Secret in the sandbox's namespace."""


class EnvVar(KocoonModel):
    """An environment variable for the sandbox's container."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.value) && has(self.valueFrom))",
                    "set either value or valueFrom, not both",
                )
            ]
        }
    )

    name: Annotated[str, Field(pattern=ENV_NAME_PATTERN, max_length=256)]
    """Name of the variable."""
    value: Annotated[str, Field(max_length=65536)] | None = None
    """Literal value."""
    value_from: EnvVarSource | None = None
    """Take the value from a Secret instead of writing it here."""

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name}: set either value or valueFrom, not both")
        return self


class ContainerPort(KocoonModel):
    """A port the sandbox's container listens on."""

    name: DnsLabel
    """Name of the port, referenced by `network.exposedPorts` (a DNS label, e.g. `http`)."""
    container_port: Port
    """Port number in the container (1-65535)."""
    protocol: Literal["TCP", "UDP"] = "TCP"
    """Transport protocol."""


class ResourceList(KocoonModel):
    """Amounts of compute resources."""

    cpu: PositiveQuantity | None = None
    """CPU, in cores or millicores (`2`, `500m`)."""
    memory: PositiveQuantity | None = None
    """Memory, in bytes with a suffix (`4Gi`)."""
    ephemeral_storage: PositiveQuantity | None = None
    """Local scratch space outside the workspace (`10Gi`)."""


class Resources(KocoonModel):
    """Compute resources of the container. GPUs are requested through `gpu`, not here."""

    requests: ResourceList | None = None
    """Resources the scheduler reserves for the pod."""
    limits: ResourceList | None = None
    """Upper bounds the container may use."""


class Toleration(KocoonModel):
    """Lets the sandbox's pod run on nodes with a matching taint."""

    key: Annotated[str, Field(max_length=316)] | None = None
    """Taint key; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """How the key relates to the value."""
    value: Annotated[str, Field(max_length=63)] | None = None
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches every effect."""


class SecurityContext(KocoonModel):
    """Who the container runs as. Kocoon always drops all capabilities, forbids privilege
    escalation and applies seccomp RuntimeDefault; with pod hardening on (the operator's
    default) it also requires a non-root user."""

    run_as_user: Annotated[int, Field(ge=0, le=2147483647)] | None = None
    """User ID of the container's processes; the image's when empty."""
    run_as_group: Annotated[int, Field(ge=0, le=2147483647)] | None = None
    """Group ID of the container's processes; the image's when empty."""
    run_as_non_root: bool | None = None
    """Refuse to start the container as root. Set to true on create under pod hardening."""
    read_only_root_filesystem: bool | None = None
    """Mount the image's filesystem read-only (write to the workspace instead)."""


class PodMetadata(KocoonModel):
    """Labels and annotations added to the sandbox's pod."""

    labels: dict[str, Annotated[str, Field(max_length=63)]] | None = None
    """Labels for the pod."""
    annotations: dict[str, str] | None = None
    """Annotations for the pod."""


class SandboxTemplate(KocoonModel):
    """The sandbox's container: a focused subset of a pod spec.

    Kocoon adds the rest itself — security context (non-root, no privilege escalation, all
    capabilities dropped, seccomp RuntimeDefault), no service-account token, the workspace
    volume, GPU requests and the runtime class.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.ports) || self.ports.all(p, self.ports.exists_one(q,"
                    " q.containerPort == p.containerPort"
                    " && q.protocol == p.protocol))",
                    "each containerPort and protocol may appear only once",
                    ".ports",
                )
            ]
        }
    )

    metadata: PodMetadata | None = None
    """Labels and annotations for the pod."""
    image: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")]
    """Container image, preferably pinned by digest so a checkpoint restores into the same image."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """When to pull the image; Kubernetes' default applies when empty."""

    command: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=64)] = []
    """Entrypoint; the image's entrypoint when empty."""
    args: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=256)] = []
    """Arguments to the entrypoint."""
    working_dir: Annotated[str, Field(pattern=ABSOLUTE_PATH_PATTERN, max_length=4096)] | None = None
    """Working directory of the container; the image's when empty."""
    env: Annotated[list[EnvVar], Field(max_length=256, json_schema_extra=list_map("name"))] = []
    """Environment variables."""
    ports: Annotated[
        list[ContainerPort], Field(max_length=32, json_schema_extra=list_map("name"))
    ] = []
    """Ports the container listens on."""
    resources: Resources | None = None
    """CPU, memory and scratch space."""
    security_context: SecurityContext | None = None
    """User and filesystem restrictions of the container."""
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = None
    """Node labels the pod must match."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = []
    """Taints the pod tolerates."""
    priority_class_name: DnsSubdomain | None = None
    """PriorityClass of the pod."""

    @model_validator(mode="after")
    def _unique_ports(self) -> SandboxTemplate:
        seen = [(port.container_port, port.protocol) for port in self.ports]
        if len(seen) != len(set(seen)):
            raise ValueError("template.ports: each containerPort and protocol may appear only once")
        return self


class Workspace(KocoonModel):
    """A persistent volume mounted into the sandbox and kept across hibernation."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                immutable("storageClassName"),
                cel(
                    "self.mountPath == oldSelf.mountPath",
                    "mountPath is immutable",
                    ".mountPath",
                ),
                cel(
                    "!isQuantity(string(self.size)) || !isQuantity(string(oldSelf.size))"
                    " || quantity(string(self.size)).compareTo(quantity(string(oldSelf.size)))"
                    " >= 0",
                    "size may grow but not shrink",
                    ".size",
                ),
            ]
        }
    )

    size: PositiveQuantity
    """Capacity of the volume, e.g. `10Gi`. May grow (where the storage class allows it), not
    shrink."""
    storage_class_name: DnsSubdomain | None = None
    """StorageClass of the volume; the cluster's default when empty. Immutable."""
    mount_path: Annotated[str, Field(pattern=ABSOLUTE_PATH_PATTERN, max_length=4096)] = "/workspace"
    """Where the volume is mounted in the container. Immutable."""


def _valid_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a CIDR: write e.g. 10.0.0.0/8 or 2001:db8::/32"
        ) from None
    if "/" not in value:
        raise ValueError(f"{value!r} has no prefix length: write e.g. {value}/32")
    return value


Cidr = Annotated[
    str,
    AfterValidator(_valid_cidr),
    Field(
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("isCIDR(self)", "must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32")
            ]
        },
    ),
]


class EgressRule(KocoonModel):
    """One destination the sandbox may reach: a CIDR or a host name, optionally limited to ports."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.cidr) != has(self.host)",
                    "set exactly one of cidr or host",
                )
            ]
        }
    )

    cidr: Cidr | None = None
    """An IPv4 or IPv6 network, e.g. `10.0.0.0/8` or `203.0.113.7/32`."""
    host: (
        Annotated[
            str,
            Field(
                max_length=253,
                pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
            ),
        ]
        | None
    ) = None
    """A host name, e.g. `api.example.com`, or a wildcard for its subdomains, e.g.
    `*.github.com`."""
    ports: Annotated[list[Port], Field(max_length=16, json_schema_extra=SET)] = []
    """TCP ports allowed to that destination; every port when empty."""

    @model_validator(mode="after")
    def _one_destination(self) -> EgressRule:
        if (self.cidr is None) == (self.host is None):
            raise ValueError("egress rule: set exactly one of cidr or host")
        return self


class Egress(KocoonModel):
    """Outbound traffic from the sandbox: denied unless allowed here."""

    allow: Annotated[list[EgressRule], Field(max_length=64)] = []
    """Destinations the sandbox may reach. Empty: no egress at all (besides DNS if allowed)."""
    allow_dns: bool = True
    """Allow DNS lookups through the cluster's DNS service."""


class Network(KocoonModel):
    """What the router exposes and where the sandbox may connect to."""

    exposed_ports: Annotated[list[DnsLabel], Field(max_length=16, json_schema_extra=SET)] = []
    """Names of `template.ports` reachable through the router; the first is the default route."""
    egress: Egress = Field(default_factory=Egress, json_schema_extra={"default": {}})
    """Outbound traffic policy (default: deny everything but DNS)."""


def _sandbox_spec_rules() -> list[JsonValue]:
    return [
        immutable("runtimeClassName"),
        cel(
            "!has(oldSelf.gpu) || !has(self.gpu) || self.gpu.mode == oldSelf.gpu.mode",
            "gpu.mode is immutable: delete and recreate the sandbox to change it",
            ".gpu.mode",
        ),
        cel(
            "has(self.workspace) == has(oldSelf.workspace)",
            "workspace cannot be added or removed after creation",
            ".workspace",
        ),
        cel(
            "!has(self.network) || !has(self.network.exposedPorts)"
            " || self.network.exposedPorts.all(n, has(self.template.ports)"
            " && self.template.ports.exists(p, p.name == n))",
            "every name in network.exposedPorts must be the name of a port in template.ports",
            ".network.exposedPorts",
        ),
        cel(
            "!has(self.hibernation) || self.hibernation != 'filesystem' || has(self.workspace)",
            "hibernation filesystem keeps only the workspace: add a workspace or use none",
            ".hibernation",
        ),
    ]


class SandboxSpec(KocoonModel):
    """What the user wants: the container, its isolation, resources and life-cycle policy."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _sandbox_spec_rules()})

    template: SandboxTemplate
    """The container to run."""
    runtime_class_name: DnsSubdomain | None = None
    """RuntimeClass isolating the pod, e.g. `kata` or `runc`. Set from the operator's
    configuration on create when empty. Immutable."""
    gpu: GpuSlice | None = None
    """A GPU slice for the pod; none when empty. The mode is immutable."""
    workspace: Workspace | None = None
    """A persistent volume kept across hibernation; none when empty."""
    network: Network = Field(default_factory=Network, json_schema_extra={"default": {}})
    """Exposed ports and egress policy. Egress is denied unless allowed."""
    idle_timeout: PositiveDuration | None = None
    """How long without activity before hibernating (in Auto mode), e.g. `10m`. Never when empty."""
    hibernation: Hibernation | None = None
    """How the sandbox hibernates: `memory` (CRIU checkpoint, resumes running processes),
    `filesystem` (pod deleted, workspace kept, cold start) or `none` (never hibernates).
    When `hibernation` is empty, the operator uses `memory` where the runtime class can
    checkpoint memory (`runc`; Kata only with a VM-snapshot driver) and the pod has no GPU that
    runtime class cannot checkpoint (only whole GPUs under `gpuMemoryCheckpointRuntimeClasses`),
    else `filesystem` when there is a workspace, else `none`."""
    shutdown_time: datetime | None = None
    """When the sandbox expires (RFC 3339, e.g. `2026-12-01T00:00:00Z`); never when empty."""
    shutdown_policy: ShutdownPolicy = "Retain"
    """At shutdownTime: `Delete` the Sandbox, or `Retain` it with its pod and checkpoint removed."""
    operating_mode: OperatingMode = "Auto"
    """The user's intent. `Auto`: hibernate when idle, wake on demand. `Running`: keep running,
    never hibernate. `Hibernated`: hibernate now and stay hibernated."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> SandboxSpec:
        names = {port.name for port in self.template.ports}
        unknown = [name for name in self.network.exposed_ports if name not in names]
        if unknown:
            raise ValueError(
                f"network.exposedPorts {unknown} must name ports in template.ports"
                f" ({sorted(names)})"
            )
        if self.hibernation == "filesystem" and self.workspace is None:
            raise ValueError(
                "hibernation filesystem keeps only the workspace: add a workspace or use none"
            )
        return self


class CheckpointCompatibility(KocoonModel):
    """What a node must match for a memory checkpoint to restore on it."""

    architecture: str | None = None
    """CPU architecture, e.g. `amd64`."""
    kernel: str | None = None
    """Kernel release of the checkpointing node."""
    criu_version: str | None = None
    """CRIU version used."""
    runtime: str | None = None
    """Container runtime and version, e.g. `runc 1.1.5`."""
    image_digest: str | None = None
    """Digest of the container image."""
    gpu_model: str | None = None
    """GPU model, when a GPU was checkpointed."""
    driver_version: str | None = None
    """GPU driver version, when a GPU was checkpointed."""


class Checkpoint(KocoonModel):
    """The sandbox's current memory checkpoint."""

    id: str
    """Identifier of the checkpoint in the node agent's store."""
    node: str | None = None
    """Node holding the archive; waking there avoids a transfer."""
    driver: str | None = None
    """Driver that wrote it, e.g. `criu-runc`, `kubelet`, `filesystem`."""
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of the (encrypted) archive."""
    created: datetime | None = None
    """When the checkpoint was taken."""
    compatibility: CheckpointCompatibility | None = None
    """Facts a node must match to restore it."""


class Usage(KocoonModel):
    """Accumulated time per state, for metering (bill active time fully, idle at a discount)."""

    active_seconds: Annotated[float, Field(ge=0)] = 0
    """Seconds running with activity."""
    idle_seconds: Annotated[float, Field(ge=0)] = 0
    """Seconds running without activity."""
    hibernated_seconds: Annotated[float, Field(ge=0)] = 0
    """Seconds hibernated."""
    gpu_seconds: Annotated[float, Field(ge=0)] = 0
    """Seconds with a GPU slice attached, times the slice's count."""
    wake_count: Annotated[int, Field(ge=0)] = 0
    """Number of wakes from hibernation."""
    last_wake_latency_seconds: Annotated[float, Field(ge=0)] | None = None
    """From the wake decision to Ready, for the last wake."""
    accounted_until: datetime | None = None
    """The moment up to which the seconds above are counted."""


class SandboxStatus(KocoonModel):
    """What the operator observes. Written only by the operator."""

    phase: SandboxPhase | None = None
    """Pending, Starting, Running, Hibernating, Hibernated, Waking, Expired, Failed or
    Terminating."""
    phase_since: datetime | None = None
    """When the sandbox entered its current phase."""
    conditions: Conditions = []
    """Ready, Hibernated, CheckpointAvailable, PodScheduled, ChildrenReady (whether every child
    object was applied), EgressEnforced (False while host-name egress rules, which a
    NetworkPolicy cannot carry, keep their traffic denied), each with a reason."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `.metadata.generation` the status reflects."""
    pod_name: str | None = None
    """The sandbox's pod; empty while hibernated."""
    node_name: str | None = None
    """Node the pod runs on; empty while hibernated."""
    pod_ip: Annotated[str | None, Field(alias="podIP")] = None
    """IP of the pod, where the router forwards to; empty while hibernated."""
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Container port the router forwards to: the first exposed port."""
    service_fqdn: Annotated[str | None, Field(alias="serviceFQDN")] = None
    """DNS name of the sandbox's Service, stable across hibernation."""
    endpoint: str | None = None
    """URL of the sandbox through the router."""
    token_secret_ref: SecretKeyReference | None = None
    """The Secret (and key) holding the bearer token the router requires for this sandbox."""
    last_activity_time: datetime | None = None
    """Last activity seen by the router or the workload."""
    checkpoint: Checkpoint | None = None
    """The current memory checkpoint, if any."""
    usage: Usage | None = None
    """Time spent per state."""
    restarts: Annotated[int, Field(ge=0)] | None = None
    """Pods replaced after they failed (evicted, or exited) since the spec last changed; at 5
    (or as many container restarts in one pod) the sandbox is Failed until its spec changes."""


class Sandbox(KocoonModel):
    """A strongly isolated pod for one session's runtime, which hibernates when idle."""

    api_version: Literal["kocoon.io/v1alpha1"] = "kocoon.io/v1alpha1"
    """APIVersion of the object."""
    kind: Literal["Sandbox"] = "Sandbox"
    """Kind of the object."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: SandboxSpec
    """Desired state."""
    status: SandboxStatus | None = None
    """Observed state."""
