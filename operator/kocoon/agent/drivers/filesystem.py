"""Filesystem-only hibernation: no memory is saved; the workspace volume is the state.

Works everywhere (Kata, GPUs). The record says so; a restore is a cold start of a new pod
on the same volume, which the operator does — this driver has nothing to run.
"""

from __future__ import annotations

import json
from pathlib import Path

from kocoon.agent.drivers.base import (
    DRIVER_FILESYSTEM,
    Availability,
    Available,
    CheckpointTarget,
    Dumped,
    Restored,
    RestoreTarget,
)

MANIFEST = "filesystem-state.json"
TARGET_STATE = "state"
STATE_WORKSPACE_VOLUME = "workspaceVolume"


class FilesystemDriver:
    @property
    def name(self) -> str:
        return DRIVER_FILESYSTEM

    async def probe(self) -> Availability:
        return Available("no memory saved; the workspace volume holds the state")

    async def runtime_identity(self) -> tuple[str | None, str | None]:
        return None, None

    async def checkpoint(self, target: CheckpointTarget, image_dir: Path, work_dir: Path) -> Dumped:
        manifest = {
            "sandbox": str(target.sandbox),
            "state": STATE_WORKSPACE_VOLUME,
            "memory": False,
        }
        (image_dir / MANIFEST).write_text(json.dumps(manifest))
        return Dumped(target={TARGET_STATE: STATE_WORKSPACE_VOLUME})

    async def restore(self, target: RestoreTarget, image_dir: Path, work_dir: Path) -> Restored:
        return Restored(
            cold_start=True,
            message="cold start: no memory was saved; start the pod on the workspace volume",
        )
