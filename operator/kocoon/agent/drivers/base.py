"""The interface every checkpoint driver implements, and the values it exchanges."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kocoon.agent.models import SandboxRef, ScalarDetail

# Driver names: the values of `driver` in API requests and checkpoint records.
DRIVER_RUNC = "runc"
DRIVER_CRUN = "crun"
DRIVER_CONTAINERD = "containerd"
DRIVER_PROCESS = "process"
DRIVER_KUBELET = "kubelet"
DRIVER_FILESYSTEM = "filesystem"
DRIVER_VMSNAPSHOT = "vmsnapshot"
DRIVER_GVISOR = "gvisor"


@dataclass(frozen=True)
class Available:
    detail: str = ""


@dataclass(frozen=True)
class Unsupported:
    reason: str


Availability = Available | Unsupported


@dataclass(frozen=True)
class CheckpointTarget:
    sandbox: SandboxRef
    container_id: str | None = None
    pid: int | None = None
    pod: str | None = None
    pod_uid: str | None = None
    container: str | None = None
    leave_running: bool = False


@dataclass(frozen=True)
class Dumped:
    """What a driver reports after writing a checkpoint into the image directory."""

    runtime: str | None = None
    runtime_version: str | None = None
    criu_version: str | None = None
    # Driver-specific facts a later restore needs (container id, bundle, pid).
    target: dict[str, ScalarDetail] = field(default_factory=dict)


@dataclass(frozen=True)
class RestoreTarget:
    sandbox: SandboxRef
    # Recorded at checkpoint time (Dumped.target), possibly overridden by the request.
    target: dict[str, ScalarDetail]


@dataclass(frozen=True)
class Restored:
    pid: int | None = None
    container_id: str | None = None
    cold_start: bool = False
    message: str = ""


class Driver(Protocol):
    """A way to checkpoint and restore a sandbox's processes on this node.

    `checkpoint` writes everything a restore needs into `image_dir` (which the store then
    archives and encrypts); `work_dir` is scratch space for logs. `restore` reads an extracted
    `image_dir`. Both raise `kocoon.agent.errors.AgentError` subclasses with clear messages.
    """

    @property
    def name(self) -> str: ...

    async def probe(self) -> Availability: ...

    async def runtime_identity(self) -> tuple[str | None, str | None]:
        """(runtime, version) a restore on this node would use, for compatibility checks."""
        ...

    async def checkpoint(
        self, target: CheckpointTarget, image_dir: Path, work_dir: Path
    ) -> Dumped: ...

    async def restore(self, target: RestoreTarget, image_dir: Path, work_dir: Path) -> Restored: ...
