"""Shared base of drivers whose mechanism this agent detects but does not drive.

Their probes report what the node has and why the driver cannot run; checkpoint and restore
refuse with the same reason. Nothing pretends to work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kocoon.agent import proc
from kocoon.agent.drivers.base import (
    Availability,
    CheckpointTarget,
    Dumped,
    Restored,
    RestoreTarget,
    Unsupported,
)
from kocoon.agent.errors import DriverUnavailable


@dataclass(frozen=True)
class Detected:
    found: list[str]
    missing: list[str]


def detect(binaries: tuple[str, ...], devices: tuple[Path, ...] = ()) -> Detected:
    found: list[str] = []
    missing: list[str] = []
    for name in binaries:
        path = proc.which(name)
        (found if path else missing).append(str(path) if path else name)
    for device in devices:
        present = device.exists() and os.access(device, os.R_OK | os.W_OK)
        (found if present else missing).append(str(device))
    return Detected(found, missing)


class Refusing:
    """Shared behaviour: checkpoint and restore refuse with the probe's reason."""

    async def probe(self) -> Availability:
        raise NotImplementedError

    async def runtime_identity(self) -> tuple[str | None, str | None]:
        return None, None

    async def _refuse(self) -> DriverUnavailable:
        availability = await self.probe()
        reason = availability.reason if isinstance(availability, Unsupported) else ""
        return DriverUnavailable(f"unsupported on this node: {reason}")

    async def checkpoint(self, target: CheckpointTarget, image_dir: Path, work_dir: Path) -> Dumped:
        raise await self._refuse()

    async def restore(self, target: RestoreTarget, image_dir: Path, work_dir: Path) -> Restored:
        raise await self._refuse()
