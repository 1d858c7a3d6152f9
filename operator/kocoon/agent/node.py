"""Facts about this node that decide where a checkpoint can be restored."""

from __future__ import annotations

import os
import platform
import re

from kocoon.agent import proc

# Runtimes reported in node facts: binary name -> regex for its version in `--version` output.
RUNTIME_VERSION_PATTERNS = {
    "runc": r"runc version\s+(\S+)",
    "crun": r"crun version\s+(\S+)",
    "runsc": r"runsc version\s+(\S+)",
    "containerd": r"containerd\s+\S+\s+v?(\S+)",
    "kata-runtime": r"kata-runtime\s*:\s*(\S+)",
}


def architecture() -> str:
    return platform.machine()


def kernel_release() -> str:
    return os.uname().release


async def runtimes() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, pattern in RUNTIME_VERSION_PATTERNS.items():
        binary = proc.which(name)
        if binary is None:
            continue
        result = await proc.run([str(binary), "--version"], time_limit=15)
        match = re.search(pattern, result.stdout + result.stderr)
        found[name] = match.group(1) if match else "unknown"
    return found


async def gpu() -> tuple[str | None, str | None]:
    """(model, driver version) of the first NVIDIA GPU, or (None, None) without one."""
    smi = proc.which("nvidia-smi")
    if smi is None:
        return None, None
    result = await proc.run(
        [str(smi), "--query-gpu=name,driver_version", "--format=csv,noheader"], time_limit=15
    )
    if not result.ok or not result.stdout.strip():
        return None, None
    model, _, driver = result.stdout.splitlines()[0].partition(",")
    return model.strip() or None, driver.strip() or None
