"""CRIU through runc: `runc checkpoint` and `runc restore --detach`, CRIU first on PATH."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kocoon.agent import proc
from kocoon.agent.drivers.base import (
    DRIVER_RUNC,
    Availability,
    Available,
    CheckpointTarget,
    Dumped,
    Restored,
    RestoreTarget,
    Unsupported,
)
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.errors import (
    CheckpointFailed,
    InvalidRequest,
    RestoreFailed,
    TargetNotFound,
)

RUNTIME_NAME = "runc"
DEFAULT_RUNC_ROOT = Path("/run/runc")
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
TARGET_CONTAINER_ID = "containerId"
TARGET_BUNDLE = "bundle"


class RuncDriver:
    def __init__(
        self, criu: CriuTool, *, runc: str = "runc", root: Path = DEFAULT_RUNC_ROOT
    ) -> None:
        self._criu = criu
        self._runc = runc
        self._root = root

    @property
    def name(self) -> str:
        return DRIVER_RUNC

    def _binary(self) -> Path | None:
        return proc.which(self._runc)

    async def _version(self) -> str | None:
        binary = self._binary()
        if binary is None:
            return None
        result = await proc.run([str(binary), "--version"], time_limit=30)
        match = re.search(r"runc version\s+(\S+)", result.stdout)
        return match.group(1) if match else None

    async def probe(self) -> Availability:
        if self._binary() is None:
            return Unsupported(f"no {self._runc} binary on PATH")
        criu = await self._criu.availability()
        if isinstance(criu, Unsupported):
            return criu
        return Available(f"runc {await self._version()}, {criu.detail}")

    async def runtime_identity(self) -> tuple[str | None, str | None]:
        return RUNTIME_NAME, await self._version()

    async def _runc_cmd(self, *args: str) -> proc.Completed:
        binary = self._binary()
        if binary is None:
            raise CheckpointFailed(f"no {self._runc} binary on PATH")
        criu_dir = (await self._criu.path()).parent
        # runc execs `criu` from PATH: the checked CRIU must come first.
        return await proc.run(
            [str(binary), "--root", str(self._root), *args], env=proc.env_with_path_first(criu_dir)
        )

    async def state(self, container_id: str) -> dict[str, Any] | None:
        result = await self._runc_cmd("state", container_id)
        if not result.ok:
            return None
        state: dict[str, Any] = json.loads(result.stdout)
        return state

    async def checkpoint(self, target: CheckpointTarget, image_dir: Path, work_dir: Path) -> Dumped:
        cid = target.container_id
        if not cid:
            raise InvalidRequest("containerId: the runc driver needs the container's runc id")
        state = await self.state(cid)
        if state is None:
            raise TargetNotFound(f"containerId: runc (root {self._root}) has no container {cid!r}")
        if state.get("status") != "running":
            raise InvalidRequest(
                f"containerId: container {cid!r} is {state.get('status')}, not running"
            )
        args = ["checkpoint", "--image-path", str(image_dir), "--work-path", str(work_dir)]
        if target.leave_running:
            args.append("--leave-running")
        result = await self._runc_cmd(*args, cid)
        if not result.ok:
            raise CheckpointFailed(
                f"runc checkpoint of {cid!r} failed (rc={result.returncode}): {result.tail(5)}\n"
                f"{proc.log_tail(work_dir / DUMP_LOG)}"
            )
        return Dumped(
            runtime=RUNTIME_NAME,
            runtime_version=await self._version(),
            criu_version=await self._criu.version(),
            target={TARGET_CONTAINER_ID: cid, TARGET_BUNDLE: str(state.get("bundle", ""))},
        )

    async def restore(self, target: RestoreTarget, image_dir: Path, work_dir: Path) -> Restored:
        cid = target.target.get(TARGET_CONTAINER_ID)
        bundle = target.target.get(TARGET_BUNDLE)
        if not isinstance(cid, str) or not cid:
            raise InvalidRequest("containerId: no container id recorded or given for the restore")
        if not isinstance(bundle, str) or not (Path(bundle) / "config.json").is_file():
            raise InvalidRequest(
                f"bundle: {bundle!r} has no config.json; "
                "give the bundle directory of the container to restore"
            )
        if await self.state(cid) is not None:
            raise RestoreFailed(
                f"containerId: a container {cid!r} already exists; "
                "delete it or restore under another id"
            )
        args = ["restore", "--image-path", str(image_dir), "--work-path", str(work_dir)]
        args += ["--bundle", bundle, "--detach"]
        result = await self._runc_cmd(*args, cid)
        if not result.ok:
            raise RestoreFailed(
                f"runc restore of {cid!r} failed (rc={result.returncode}): {result.tail(5)}\n"
                f"{proc.log_tail(work_dir / RESTORE_LOG)}"
            )
        state = await self.state(cid)
        pid = state.get("pid") if state else None
        return Restored(
            pid=pid if isinstance(pid, int) else None,
            container_id=cid,
            message=f"restored container {cid} ({state.get('status') if state else 'unknown'})",
        )
