"""The runc binary as the CRIU-based drivers use it: one state root, the checked CRIU first on
PATH (runc execs `criu` from PATH), output captured to files."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kocoon.agent import proc
from kocoon.agent.drivers.criutool import CriuTool

DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
RUNC_LOG = "runc.log"


class RuncMissing(Exception):
    """No runc binary on PATH."""


class RuncTool:
    def __init__(self, criu: CriuTool, *, runc: str = "runc", root: Path) -> None:
        self.criu = criu
        self.runc = runc
        self.root = root

    def binary(self) -> Path | None:
        return proc.which(self.runc)

    async def _version_output(self) -> str:
        binary = self.binary()
        if binary is None:
            return ""
        return (await proc.run([str(binary), "--version"], time_limit=30)).stdout

    async def version(self) -> str | None:
        name = re.escape(Path(self.runc).name)
        match = re.search(rf"{name} version\s+(\S+)", await self._version_output())
        return match.group(1) if match else None

    async def features(self) -> set[str]:
        """Build features the runtime lists in its version output (crun: `+CRIU`, ...)."""
        return set(re.findall(r"\+([A-Z0-9_]+)", await self._version_output()))

    async def run(
        self, *args: str, log: Path | None = None, output: tuple[int, int] | None = None
    ) -> proc.Completed:
        binary = self.binary()
        if binary is None:
            raise RuncMissing(f"no {self.runc} binary on PATH")
        criu_dir = (await self.criu.path()).parent
        logging = ["--log", str(log)] if log is not None else []
        return await proc.run(
            [str(binary), "--root", str(self.root), *logging, *args],
            env=proc.env_with_path_first(criu_dir),
            output=output,
        )

    async def state(self, container_id: str) -> dict[str, Any] | None:
        result = await self.run("state", container_id)
        if not result.ok:
            return None
        state: dict[str, Any] = json.loads(result.stdout)
        return state

    async def list(self) -> list[dict[str, Any]]:
        """Every container under this root (`runc list`), with its annotations."""
        if not self.root.is_dir():
            return []
        result = await self.run("list", "--format", "json")
        if not result.ok:
            return []
        listed: list[dict[str, Any]] | None = json.loads(result.stdout or "null")
        return listed or []

    async def checkpoint(
        self, container_id: str, image_dir: Path, work_dir: Path, flags: Sequence[str] = ()
    ) -> proc.Completed:
        return await self.run(
            "checkpoint",
            "--image-path",
            str(image_dir),
            "--work-path",
            str(work_dir),
            *flags,
            container_id,
        )

    async def restore(
        self,
        container_id: str,
        bundle: Path,
        image_dir: Path,
        work_dir: Path,
        output: tuple[int, int] | None = None,
    ) -> proc.Completed:
        """Restore detached. `output`: stdout and stderr for the restored process (the runc
        process's own messages then go to `work_dir/runc.log`)."""
        return await self.run(
            "restore",
            "--image-path",
            str(image_dir),
            "--work-path",
            str(work_dir),
            "--bundle",
            str(bundle),
            "--detach",
            container_id,
            log=work_dir / RUNC_LOG if output else None,
            output=output,
        )

    async def remove(self, container_id: str) -> None:
        """Kill and delete a container; a container already gone is not an error."""
        await self.run("kill", container_id, "KILL")
        await self.run("delete", "--force", container_id)
