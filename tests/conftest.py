"""Shared fixtures. The `cluster` fixture starts one local cluster for the whole test session.

Set KOCOON_TEST_CLUSTER=<name> to reuse a cluster already started with `kocoon dev up --name
<name>`; it is then left running after the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kocoon.devcluster import Cluster, ClusterState, binaries, down, stack, up


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


OPERATOR_NAMESPACE = stack.NAMESPACE
install_crds = stack.install_crds


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_operator(
    cluster: Cluster, directory: Path, env: dict[str, str] | None = None
) -> OperatorProcess:
    kubeconfig = stack.component_kubeconfig(cluster, "operator", directory)
    log = directory / f"operator-{time.monotonic_ns()}.log"
    environment = {
        **os.environ,
        "KOCOON_RECONCILE_INTERVAL": "1",
        "KOCOON_NAMESPACE": OPERATOR_NAMESPACE,
        **(env or {}),
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kocoon.cli",
                "operator",
                "--kubeconfig",
                str(kubeconfig),
                "--log-format",
                "json",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    return OperatorProcess(process, log)


def stop_operator(operator: OperatorProcess) -> None:
    operator.process.terminate()
    try:
        operator.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        operator.process.kill()
        operator.process.wait()


# Namespaces tests create; the operator fixture deletes them before it stops, so the
# finalizers of what they hold are handled and the next module's operator starts clean.
CREATED_NAMESPACES: list[str] = []


def delete_created_namespaces(cluster: Cluster) -> None:
    names = list(CREATED_NAMESPACES)
    CREATED_NAMESPACES.clear()
    if names:
        cluster.kubectl(
            "delete",
            "namespace",
            *names,
            "--wait=true",
            "--timeout=60s",
            "--ignore-not-found",
            check=False,
            timeout=90,
        )


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator, run as a process with the chart's RBAC against the local cluster."""
    install_crds(cluster)
    running = start_operator(cluster, tmp_path_factory.mktemp("operator"))
    try:
        yield running
    finally:
        delete_created_namespaces(cluster)
        stop_operator(running)
        problems = [line for line in running.output().splitlines() if '"level": "error"' in line]
        if problems:
            print("operator errors:\n" + "\n".join(problems[:20]))
