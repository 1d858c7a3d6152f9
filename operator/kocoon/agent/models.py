"""The agent API's documents: requests, checkpoint records, node facts (camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# RFC 1123 label (namespace) and subdomain (object name), as Kubernetes validates them.
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Ids the agent makes (`ckpt-<utc time>-<random>`) or the caller chooses (a DNS label), so a
# caller that retries after a crash names the same checkpoint and gets it back.
CHECKPOINT_ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# Container ids as runc accepts them; also keeps them safe as path components.
_CONTAINER_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_UID = r"^[0-9a-fA-F-]{1,64}$"

ScalarDetail = str | int | bool


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class SandboxRef(ApiModel):
    namespace: Annotated[str, Field(pattern=_DNS_LABEL, max_length=63)]
    name: Annotated[str, Field(pattern=_DNS_SUBDOMAIN, max_length=253)]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class Compatibility(ApiModel):
    """What a restore needs to match; recorded at checkpoint time."""

    architecture: str
    kernel_release: str
    criu_version: str | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    image_digest: str | None = None
    gpu_model: str | None = None
    gpu_driver: str | None = None


class CheckpointRequest(ApiModel):
    sandbox: SandboxRef
    driver: str
    # Optional id chosen by the caller: asking again with an id that is already stored
    # returns that checkpoint instead of taking another (retries are safe).
    id: Annotated[str | None, Field(pattern=CHECKPOINT_ID_PATTERN)] = None
    container_id: Annotated[str | None, Field(pattern=_CONTAINER_ID)] = None
    pid: Annotated[int | None, Field(gt=1)] = None
    pod: Annotated[str | None, Field(pattern=_DNS_SUBDOMAIN)] = None
    pod_uid: Annotated[str | None, Field(pattern=_UID)] = None
    container: Annotated[str | None, Field(pattern=_DNS_LABEL)] = None
    leave_running: bool = False
    image_digest: str | None = None


class RestoreRequest(ApiModel):
    container_id: Annotated[str | None, Field(pattern=_CONTAINER_ID)] = None
    # The pod to restore into (the containerd driver): a new pod of the same sandbox.
    pod_uid: Annotated[str | None, Field(pattern=_UID)] = None
    container: Annotated[str | None, Field(pattern=_DNS_LABEL)] = None
    bundle: str | None = None
    image_digest: str | None = None


# States of a checkpoint's copy in the remote object store.
REMOTE_UPLOADED = "Uploaded"
REMOTE_FAILED = "Failed"


class RemoteCopy(ApiModel):
    """Where a checkpoint's copy in the remote object store is, or why the upload failed."""

    state: Literal["Uploaded", "Failed"]
    bucket: str
    key: str
    meta_key: str
    etag: str | None = None
    uploaded: datetime | None = None
    upload_seconds: float | None = None
    error: str | None = None


class CheckpointRecord(ApiModel):
    id: Annotated[str, Field(pattern=CHECKPOINT_ID_PATTERN)]
    sandbox: SandboxRef
    driver: str
    node: str
    created: datetime
    size_bytes: int
    image_bytes: int
    sha256: str
    compatibility: Compatibility
    target: dict[str, ScalarDetail] = Field(default_factory=dict)
    dump_seconds: float = 0.0
    archive_seconds: float = 0.0
    # Set when the agent copies archives to an object store (see `remote`).
    remote: RemoteCopy | None = None


class RestoreResult(ApiModel):
    checkpoint_id: str
    driver: str
    pid: int | None = None
    container_id: str | None = None
    cold_start: bool = False
    message: str = ""
    extract_seconds: float = 0.0
    restore_seconds: float = 0.0


class DriverStatus(ApiModel):
    name: str
    available: bool
    detail: str = ""


class NodeFacts(ApiModel):
    node: str
    architecture: str
    kernel_release: str
    criu_path: str | None = None
    criu_version: str | None = None
    runtimes: dict[str, str] = Field(default_factory=dict)
    gpu_model: str | None = None
    gpu_driver: str | None = None
    drivers: list[DriverStatus] = Field(default_factory=list)


class PruneRequest(ApiModel):
    sandbox: SandboxRef
    keep_last: Annotated[int | None, Field(ge=0)] = None
    max_age_seconds: Annotated[float | None, Field(gt=0)] = None


class PruneResult(ApiModel):
    deleted: list[str]


class ErrorBody(ApiModel):
    reason: str
    message: str
