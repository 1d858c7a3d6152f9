"""CRIU through runc: `runc checkpoint` and `runc restore --detach`, CRIU first on PATH."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kocoon.agent import proc
from kocoon.agent.drivers.base import (
    DRIVER_CRUN,
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
from kocoon.agent.drivers.runctool import DUMP_LOG, RESTORE_LOG, RuncMissing, RuncTool
from kocoon.agent.errors import (
    CheckpointFailed,
    InvalidRequest,
    RestoreFailed,
    TargetNotFound,
)

RUNTIME_NAME = "runc"
DEFAULT_RUNC_ROOT = Path("/run/runc")
TARGET_CONTAINER_ID = "containerId"
TARGET_BUNDLE = "bundle"


class RuncDriver:
    name = DRIVER_RUNC

    def __init__(
        self, criu: CriuTool, *, runc: str = "runc", root: Path = DEFAULT_RUNC_ROOT
    ) -> None:
        self._criu = criu
        self._tool = RuncTool(criu, runc=runc, root=root)

    async def probe(self) -> Availability:
        if self._tool.binary() is None:
            return Unsupported(f"no {self._tool.runc} binary on PATH")
        missing = await self._missing_features()
        if missing:
            return Unsupported(missing)
        criu = await self._criu.availability()
        if isinstance(criu, Unsupported):
            return criu
        return Available(f"{self._tool.runc} {await self._tool.version()}, {criu.detail}")

    async def _missing_features(self) -> str | None:
        return None

    async def runtime_identity(self) -> tuple[str | None, str | None]:
        return self.name, await self._tool.version()

    async def state(self, container_id: str) -> dict[str, Any] | None:
        try:
            return await self._tool.state(container_id)
        except RuncMissing as error:
            raise CheckpointFailed(str(error)) from error

    async def checkpoint(self, target: CheckpointTarget, image_dir: Path, work_dir: Path) -> Dumped:
        cid = target.container_id
        if not cid:
            raise InvalidRequest("containerId: the runc driver needs the container's runc id")
        state = await self.state(cid)
        if state is None:
            raise TargetNotFound(
                f"containerId: runc (root {self._tool.root}) has no container {cid!r}"
            )
        if state.get("status") != "running":
            raise InvalidRequest(
                f"containerId: container {cid!r} is {state.get('status')}, not running"
            )
        flags = ["--leave-running"] if target.leave_running else []
        result = await self._tool.checkpoint(cid, image_dir, work_dir, flags)
        if not result.ok:
            raise CheckpointFailed(
                f"runc checkpoint of {cid!r} failed (rc={result.returncode}): {result.tail(5)}\n"
                f"{proc.log_tail(work_dir / DUMP_LOG)}"
            )
        return Dumped(
            runtime=self.name,
            runtime_version=await self._tool.version(),
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
        result = await self._tool.restore(cid, Path(bundle), image_dir, work_dir)
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


DEFAULT_CRUN_ROOT = Path("/run/crun")


class CrunDriver(RuncDriver):
    """The same checkpoint and restore through crun, which has runc's command line; crun
    checkpoints only when built with CRIU (`+CRIU` among its features)."""

    name = DRIVER_CRUN

    def __init__(self, criu: CriuTool, *, root: Path = DEFAULT_CRUN_ROOT) -> None:
        super().__init__(criu, runc="crun", root=root)

    async def _missing_features(self) -> str | None:
        features = await self._tool.features()
        if "CRIU" in features:
            return None
        return (
            f"crun {await self._tool.version()} is built without CRIU (features: "
            f"{' '.join(sorted('+' + f for f in features))}): use a crun built with CRIU, "
            "or the runc driver"
        )
