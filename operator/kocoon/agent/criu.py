"""Finding the CRIU binary this node should use and what it can do."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kocoon.agent import proc

ENV_CRIU = "KOCOON_CRIU"
ENV_CACHE = "KOCOON_CACHE"
# The version setup/criu.sh builds; the cache directory is keyed by it.
CACHED_CRIU_VERSION = "4.2.1"


def cached_criu_path() -> Path:
    cache = os.environ.get(ENV_CACHE) or str(Path.home() / ".cache" / "kocoon")
    return Path(cache) / f"criu-{CACHED_CRIU_VERSION}" / "bin" / "criu"


def find_criu() -> Path | None:
    """$KOCOON_CRIU, else the cache setup/criu.sh fills, else PATH."""
    explicit = os.environ.get(ENV_CRIU)
    if explicit:
        return Path(explicit) if os.access(explicit, os.X_OK) else None
    cached = cached_criu_path()
    if os.access(cached, os.X_OK):
        return cached
    return proc.which("criu")


@dataclass(frozen=True)
class CriuInfo:
    path: Path
    version: str | None
    check_ok: bool
    check_output: str


async def inspect(path: Path) -> CriuInfo:
    version_run = await proc.run([str(path), "--version"], time_limit=30)
    match = re.search(r"Version:\s*(\S+)", version_run.stdout)
    check = await proc.run([str(path), "check"], time_limit=60)
    output = "\n".join(
        line for line in (check.stdout + check.stderr).splitlines() if "RLIMIT_NOFILE" not in line
    )
    return CriuInfo(
        path=path,
        version=match.group(1) if match else None,
        check_ok=check.ok,
        check_output=output.strip(),
    )
