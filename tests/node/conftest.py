"""The real node: started once per session on the shared local cluster, stopped with it.

Set KOCOON_TEST_CLUSTER=<name> to use a cluster started with `kocoon dev up --name <name>
--real-node`; a real node is added to it if it has none.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from nodekit import run_pod

from kocoon.devcluster import Cluster, binaries, images, realnode, up


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
