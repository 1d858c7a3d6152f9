"""The CRIU binary shared by the CRIU-based drivers, inspected once per agent."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kocoon.agent import criu
from kocoon.agent.drivers.base import Availability, Available, Unsupported


class CriuTool:
    def __init__(self, path: Path | None = None) -> None:
        self._explicit = path
        self._info: criu.CriuInfo | None = None
        self._lock = asyncio.Lock()

    async def info(self) -> criu.CriuInfo | None:
        async with self._lock:
            if self._info is None:
                path = self._explicit or criu.find_criu()
                if path is None:
                    return None
                self._info = await criu.inspect(path)
            return self._info

    async def availability(self) -> Availability:
        info = await self.info()
        if info is None:
            return Unsupported(
                f"no criu binary: set ${criu.ENV_CRIU}, run setup/criu.sh "
                f"(fills {criu.cached_criu_path()}), or put criu on PATH"
            )
        if not info.check_ok:
            return Unsupported(f"`{info.path} check` fails on this kernel: {info.check_output}")
        return Available(f"criu {info.version} at {info.path}")

    async def path(self) -> Path:
        info = await self.info()
        if info is None:
            raise RuntimeError("criu is not available")
        return info.path

    async def version(self) -> str | None:
        info = await self.info()
        return info.version if info else None
