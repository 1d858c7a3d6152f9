"""End-to-end tests run on kind, which needs a Docker engine; without one they are skipped."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def docker_engine_problem() -> str | None:
    """Why kind cannot run here, or None when it can."""
    if shutil.which("kind") is None:
        return "kind is not installed"
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "no Docker engine is running (docker info failed): kind needs one"
    return None


@pytest.fixture(scope="session")
def kind_cluster() -> Iterator[Path]:
    problem = docker_engine_problem()
    if problem:
        pytest.skip(f"e2e on kind skipped: {problem}")
    kubeconfig = HERE / ".kubeconfig"
    subprocess.run(
        [
            "kind",
            "create",
            "cluster",
            "--config",
            str(HERE / "kind-config.yaml"),
            "--kubeconfig",
            str(kubeconfig),
            "--wait",
            "120s",
        ],
        check=True,
    )
    try:
        yield kubeconfig
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", "kocoon-e2e"], check=False)
        kubeconfig.unlink(missing_ok=True)
