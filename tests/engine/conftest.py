"""The CPU engine's tests: llama-server with SmolLM2-135M from setup/llamacpp.sh.

They skip, naming the setup script, when the engine or the model is not in the cache.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from llamakit import SERVED_NAME

from kocoon.agent.criu import find_criu
from kocoon.devcluster import Cluster, binaries, engines, realnode, up
from kocoon.devcluster.processes import free_port


@pytest.fixture(scope="session")
def engine_installed() -> None:
    try:
        engines.llama_server()
        engines.smollm2_model()
    except engines.EngineNotInstalledError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def server(
    engine_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[engines.LocalServer]:
    """One loaded llama-server per module, on loopback."""
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with engines.local_server(log, port=free_port(), served_name=SERVED_NAME) as running:
        yield running


@pytest.fixture(scope="session")
def real_node(cluster: Cluster) -> Cluster:
    """The session's local cluster with this machine joined as a real node."""
    if os.geteuid() != 0:
        pytest.skip("the real node needs root")
    try:
        realnode.preflight()
    except (binaries.MissingBinaryError, realnode.RealNodeError) as error:
        pytest.skip(f"real node unavailable: {error} (make node-setup)")
    return up(cluster.name, real_node=True)


@pytest.fixture(scope="session")
def criu_binary() -> Path:
    if os.geteuid() != 0:
        pytest.skip("CRIU tests need root")
    criu = find_criu()
    if criu is None:
        pytest.skip("no CRIU: run setup/criu.sh (or set KOCOON_CRIU)")
    check = subprocess.run([str(criu), "check"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        pytest.skip(f"`{criu} check` fails on this kernel: {check.stderr.strip()[-300:]}")
    return criu
