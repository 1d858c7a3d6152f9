"""The real node: started once per session on the shared local cluster, stopped with it.

Set KOCOON_TEST_CLUSTER=<name> to use a cluster started with `kocoon dev up --name <name>
--real-node`; a real node is added to it if it has none.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodekit import run_pod
from sandboxkit import NAME, ROOT_IS_ENOUGH, Stack
from tests.conftest import install_crds, start_operator, stop_operator

from kocoon.devcluster import Cluster, binaries, images, realnode, stack, up


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


@pytest.fixture
def counter_pod(real_node: Cluster) -> Iterator[dict[str, Any]]:
    """A Python HTTP server with in-memory state on the real node (runtimeClassName runc)."""
    name = f"counter-{time.monotonic_ns() % 10**8}"
    manifest = realnode.pod_manifest(
        name, images.reference(images.PYTHON), port=images.COUNTER_PORT
    )
    pod = run_pod(real_node, manifest)
    try:
        yield pod
    finally:
        real_node.kubectl("delete", "pod", name, "--wait=false", check=False)


@pytest.fixture
def running_stack(real_node: Cluster, tmp_path: Path) -> Iterator[Stack]:
    """Agent, operator and router on the cluster with its real node, as `make dev` runs
    them, and a namespace for the test's Sandbox."""
    install_crds(real_node)
    agent_env = stack.start_agent(real_node)
    if not ROOT_IS_ENOUGH:
        # The sandboxes run as root (CRIU needs it here): pod hardening would refuse that.
        agent_env["KOCOON_POD_HARDENING"] = "false"
    operator = start_operator(real_node, tmp_path, env=agent_env)
    _, router = stack.start_router(real_node)
    namespace = f"node-hibernate-{time.monotonic_ns() % 10**6}"
    real_node.kubectl("create", "namespace", namespace)
    node = realnode.layout(real_node.state)
    running = Stack(
        real_node,
        router,
        Path(real_node.state.directory) / "agent" / "state",
        node.runc_root / "kocoon-restored",
        namespace,
        operator,
        agent_env,
    )
    try:
        yield running
    finally:
        running.kubectl("delete", "sandbox", NAME, "--ignore-not-found", "--timeout=60s")
        real_node.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        stop_operator(operator)
        if running.operator is not operator:
            # The test started another (it killed the first): left running, it would go on
            # reconciling the next tests' objects beside their own operator.
            stop_operator(running.operator)
        stack.stop_process(real_node, "kocoon-router")
        stack.stop_process(real_node, "kocoon-agent")
        errors = [line for line in operator.output().splitlines() if '"level": "error"' in line]
        assert not errors, "\n".join(errors[:10])
