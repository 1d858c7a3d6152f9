"""A ModelDeployment's children come back when deleted by hand, within one resync."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kocoon.devcluster import Cluster
from tests.conftest import OperatorProcess, install_crds, start_operator, stop_operator
from tests.controllers.helpers import get, new_namespace, wait_for
from tests.model.test_controller import deployment

pytestmark = pytest.mark.integration

RESYNC_SECONDS = 2


@pytest.fixture(scope="module")
def quick_resync(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    install_crds(cluster)
    running: OperatorProcess = start_operator(
        cluster,
        tmp_path_factory.mktemp("resync"),
        env={"KOCOON_RESYNC_SECONDS": str(RESYNC_SECONDS)},
    )
    try:
        yield
    finally:
        stop_operator(running)


def test_children_deleted_by_hand_come_back(cluster: Cluster, quick_resync: None) -> None:
    namespace = new_namespace(cluster, "child")
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps(deployment("k", namespace, cache={"size": "1Gi"}))
    )
    children = [
        ("service", "kocoon-model-k"),
        ("networkpolicy", "kocoon-model-k"),
        ("pvc", "kocoon-model-k-cache"),
        ("lease", "kocoon-activity-modeldeployment-k"),
    ]
    first = {}
    for kind, name in children:
        found = wait_for(f"{kind} {name}", lambda k=kind, n=name: get(cluster, k, namespace, n))
        first[kind] = found["metadata"]["uid"]
    for kind, name in children:
        cluster.kubectl("delete", kind, name, "-n", namespace, "--wait=true")
    for kind, name in children:

        def back(k: str = kind, n: str = name) -> bool:
            found = get(cluster, k, namespace, n)
            return found is not None and found["metadata"]["uid"] != first[k]

        wait_for(f"{kind} {name} to come back", back, timeout=RESYNC_SECONDS * 5)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
