"""Shared fixtures. The `cluster` fixture starts one local cluster for the whole test session.

Set KOCOON_TEST_CLUSTER=<name> to reuse a cluster already started with `kocoon dev up --name
<name>`; it is then left running after the tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kocoon.devcluster import Cluster, ClusterState, binaries, down, up


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    reuse = os.environ.get("KOCOON_TEST_CLUSTER")
    if reuse:
        state = ClusterState.load(reuse)
        if state is None:
            pytest.fail(
                f"KOCOON_TEST_CLUSTER={reuse}: no such cluster (kocoon dev up --name {reuse})"
            )
        yield Cluster(state)
        return
    try:
        binaries.find("kube-apiserver")
    except binaries.MissingBinaryError as error:
        pytest.skip(f"local cluster unavailable: {error}")
    name = f"test-{os.getpid()}"
    handle = up(name)
    try:
        yield handle
    finally:
        down(name)
