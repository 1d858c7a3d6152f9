"""Plain CRIU on a process tree: `criu dump -t PID` and `criu restore -d`.

For processes started in their own session with stdio on files or /dev/null (no terminal);
used by tests and benchmarks, and as the baseline the container drivers are measured against.
"""

from __future__ import annotations

from pathlib import Path

from kocoon.agent import proc
from kocoon.agent.drivers.base import (
    DRIVER_PROCESS,
    Availability,
    CheckpointTarget,
    Dumped,
    Restored,
    RestoreTarget,
)
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.errors import (
    CheckpointFailed,
    InvalidRequest,
    RestoreFailed,
    TargetNotFound,
)

DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
TARGET_PID = "pid"


class ProcessDriver:
    def __init__(self, criu: CriuTool) -> None:
        self._criu = criu

    @property
    def name(self) -> str:
        return DRIVER_PROCESS

    async def probe(self) -> Availability:
        return await self._criu.availability()

    async def runtime_identity(self) -> tuple[str | None, str | None]:
        return None, None

    async def checkpoint(self, target: CheckpointTarget, image_dir: Path, work_dir: Path) -> Dumped:
        if target.pid is None:
            raise InvalidRequest("pid: the process driver needs the pid of the tree's root")
        if not _pid_exists(target.pid):
            raise TargetNotFound(f"pid: no process {target.pid} on this node")
        argv = [str(await self._criu.path()), "dump", "-t", str(target.pid)]
        argv += ["-D", str(image_dir), "-W", str(work_dir), "-o", DUMP_LOG, "-v2"]
        if target.leave_running:
            argv.append("--leave-running")
        result = await proc.run(argv)
        if not result.ok:
            raise CheckpointFailed(
                f"criu dump of pid {target.pid} failed (rc={result.returncode}):\n"
                f"{proc.log_tail(work_dir / DUMP_LOG) or result.tail()}"
            )
        return Dumped(criu_version=await self._criu.version(), target={TARGET_PID: target.pid})

    async def restore(self, target: RestoreTarget, image_dir: Path, work_dir: Path) -> Restored:
        pidfile = work_dir / "restored.pid"
        argv = [str(await self._criu.path()), "restore", "-d", "-D", str(image_dir)]
        argv += ["-W", str(work_dir), "-o", RESTORE_LOG, "-v2", "--pidfile", str(pidfile)]
        recorded = target.target.get(TARGET_PID)
        if isinstance(recorded, int) and _pid_exists(recorded):
            # CRIU restores the original pid; a live process holding it makes the restore fail
            # with a confusing clone error, so say it plainly.
            raise RestoreFailed(
                f"pid {recorded} is in use on this node; stop that process or restore elsewhere"
            )
        result = await proc.run(argv)
        if not result.ok:
            raise RestoreFailed(
                f"criu restore failed (rc={result.returncode}):\n"
                f"{proc.log_tail(work_dir / RESTORE_LOG) or result.tail()}"
            )
        pid = int(pidfile.read_text().strip()) if pidfile.exists() else None
        return Restored(pid=pid, message=f"restored process tree, root pid {pid}")


def _pid_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()
