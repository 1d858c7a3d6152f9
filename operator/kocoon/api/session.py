"""AgentSession: the logical session — cheap, always present, owning a Sandbox while it computes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.config import JsonValue

from kocoon.api.common import (
    Conditions,
    DnsLabel,
    KocoonModel,
    LocalObjectReference,
    ObjectMeta,
    Port,
    PositiveDuration,
    SecretKeyReference,
    cel,
    immutable,
    list_map,
)
from kocoon.api.conditions import SessionPhase
from kocoon.api.sandbox import Hibernation, OperatingMode, SandboxSpec, Usage

IDENTITY_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.@+]*[A-Za-z0-9])?$"
Identity = Annotated[str, Field(pattern=IDENTITY_PATTERN, min_length=1, max_length=253)]


class Owner(KocoonModel):
    """Who the session belongs to. Immutable: a session never changes hands."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [immutable("tenant")]})

    user: Identity
    """The end user the session acts for, e.g. `alice@example.com`."""
    tenant: Identity | None = None
    """The tenant (team, customer) billed for the session."""


class ServiceReference(KocoonModel):
    """A Service in the session's namespace."""

    name: DnsLabel
    """Name of the Service."""
    port: Port
    """Port of the Service."""
    path: Annotated[str, Field(pattern=r"^/[^\s]*$", max_length=1024)] = "/"
    """HTTP path of the endpoint."""


class Tool(KocoonModel):
    """An MCP server the session's agent may use: a URL or a Service in the namespace."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.url) != has(self.serviceRef)", "set exactly one of url or serviceRef")
            ]
        }
    )

    name: DnsLabel
    """Name of the tool, unique in the session."""
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)] | None = None
    """URL of the MCP server (http or https)."""
    service_ref: ServiceReference | None = None
    """A Service in the session's namespace serving MCP."""

    @model_validator(mode="after")
    def _one_location(self) -> Tool:
        if (self.url is None) == (self.service_ref is None):
            raise ValueError(f"tools[{self.name}]: set exactly one of url or serviceRef")
        return self


def _session_rules() -> list[JsonValue]:
    return [
        cel(
            "self.owner.user == oldSelf.owner.user",
            "owner.user is immutable: a session never changes hands",
            ".owner.user",
        ),
        cel(
            "!has(self.maxLifetime) || !has(self.idleTimeout)"
            " || duration(self.idleTimeout) < duration(self.maxLifetime)",
            "idleTimeout must be shorter than maxLifetime",
            ".idleTimeout",
        ),
    ]


class AgentSessionSpec(KocoonModel):
    """The session: who owns it, what runs, which models and tools it uses, and its policies.

    Session-level policies (idleTimeout, hibernation, operatingMode) take precedence over the
    same fields in sandboxTemplate.
    """

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _session_rules()})

    owner: Owner
    """Who the session belongs to. Immutable."""
    sandbox_template: SandboxSpec
    """The runtime created for the session whenever it has compute."""
    idle_timeout: PositiveDuration | None = None
    """How long without activity before the session hibernates, e.g. `10m`; the template's
    when empty."""
    max_lifetime: PositiveDuration | None = None
    """How long the session may exist from creation, e.g. `24h`; then it expires. Unlimited
    when empty."""
    hibernation: Hibernation | None = None
    """How the session hibernates (memory, filesystem, none); the template's when empty."""
    retention: PositiveDuration | None = None
    """How long a hibernated session keeps its memory checkpoint, e.g. `168h`; afterwards it
    wakes cold from its workspace. Kept until the session is deleted when empty."""
    models: Annotated[
        list[LocalObjectReference], Field(max_length=16, json_schema_extra=list_map("name"))
    ] = []
    """ModelDeployments in the namespace the session calls; woken with the session."""
    tools: Annotated[list[Tool], Field(max_length=32, json_schema_extra=list_map("name"))] = []
    """MCP servers the session's agent may use."""
    operating_mode: OperatingMode = "Auto"
    """The user's intent: `Auto` (hibernate when idle, wake on demand), `Running` or
    `Hibernated`."""

    @model_validator(mode="after")
    def _idle_within_lifetime(self) -> AgentSessionSpec:
        if self.idle_timeout and self.max_lifetime and self.idle_timeout >= self.max_lifetime:
            raise ValueError("idleTimeout must be shorter than maxLifetime")
        return self


class AgentSessionStatus(KocoonModel):
    """What the operator observes about the session. Written only by the operator."""

    phase: SessionPhase | None = None
    """Pending, Starting, Running, Hibernating, Hibernated, Waking, Expired, Failed or
    Terminating."""
    conditions: Conditions = []
    """Ready, Hibernated, Expired, each with a reason."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `.metadata.generation` the status reflects."""
    endpoint: str | None = None
    """Stable URL of the session through the router; unchanged across hibernation."""
    sandbox_ref: LocalObjectReference | None = None
    """The Sandbox currently backing the session."""
    token_secret_ref: SecretKeyReference | None = None
    """Secret holding the bearer token the router checks for this session."""
    start_time: datetime | None = None
    """When the session first became Running."""
    last_activity_time: datetime | None = None
    """Last activity seen by the router."""
    usage: Usage | None = None
    """Time per state, aggregated over the session's sandboxes."""


class AgentSession(KocoonModel):
    """One agent session: a stable route, token and state, with compute only while active."""

    api_version: Literal["kocoon.io/v1alpha1"] = "kocoon.io/v1alpha1"
    """APIVersion of the object."""
    kind: Literal["AgentSession"] = "AgentSession"
    """Kind of the object."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: AgentSessionSpec
    """Desired state."""
    status: AgentSessionStatus | None = None
    """Observed state."""
