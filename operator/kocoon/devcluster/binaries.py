"""Where the local cluster's binaries are: built by `setup/binaries.sh` into the cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
)


class MissingBinaryError(RuntimeError):
    """A binary the local cluster needs has not been built."""


def cache_dir() -> Path:
    return Path(os.environ.get("KOCOON_CACHE", Path.home() / ".cache" / "kocoon"))


def bin_dir() -> Path:
    return Path(os.environ.get("KOCOON_BIN_DIR", cache_dir() / "bin"))


def find(name: str) -> Path:
    """The path of binary `name`: the project's cache first, then PATH for the optional ones."""
    candidate = bin_dir() / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate.resolve()
    raise MissingBinaryError(
        f"{name} not found in {bin_dir()}: run `make binaries` (setup/binaries.sh) to build it"
    )


def find_optional(name: str) -> Path | None:
    try:
        return find(name)
    except MissingBinaryError:
        found = shutil.which(name)
        return Path(found) if found else None
