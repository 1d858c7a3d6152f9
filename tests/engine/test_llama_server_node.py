"""The CPU engine as a pod on the real node: the llamacpp image runs llama-server, the model
reaches it through a Kubernetes image volume of the smollm2 image, and it answers at its pod IP."""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from llamakit import SERVED_NAME, ask, ask_streamed

from kocoon import contract
from kocoon.devcluster import Cluster, engines, images, realnode

pytestmark = [pytest.mark.node, pytest.mark.engine]


def engine_pod(name: str) -> dict[str, Any]:
    manifest = realnode.pod_manifest(name, engines.LLAMACPP_IMAGE)
    container = manifest["spec"]["containers"][0]
    container["args"] = engines.server_args(
        engines.IMAGE_SMOLLM2,
        served_name=SERVED_NAME,
        host="0.0.0.0",
        port=contract.ENGINE_PORT,
    )
    container["ports"] = [{"name": "http", "containerPort": contract.ENGINE_PORT}]
    # /health is 503 while the model loads, 200 once it serves: the readiness probe.
    container["readinessProbe"] = {
        "httpGet": {"path": "/health", "port": contract.ENGINE_PORT},
        "periodSeconds": 1,
    }
    container["volumeMounts"] = [engines.model_volume_mount()]
    manifest["spec"]["volumes"] = [engines.model_image_volume()]
    return manifest


def wait_ready(cluster: Cluster, name: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = json.loads(cluster.kubectl("get", "pod", name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if conditions.get("Ready") == "True":
            return pod
        time.sleep(0.5)
    described = cluster.kubectl("describe", "pod", name, check=False).stdout
    logs = cluster.kubectl("logs", name, check=False)
    pytest.fail(
        f"pod {name} not Ready:\n{described[-2500:]}\n{(logs.stdout + logs.stderr)[-1500:]}"
    )


@pytest.fixture
def engine_on_node(real_node: Cluster, engine_installed: None) -> Iterator[dict[str, Any]]:
    name = f"llamacpp-{time.monotonic_ns() % 10**8}"
    real_node.apply(engine_pod(name))
    try:
        yield wait_ready(real_node, name)
    finally:
        real_node.kubectl("delete", "pod", name, "--wait=false", check=False)


def test_engine_pod_with_the_model_image_volume_serves_at_its_pod_ip(
    real_node: Cluster, engine_on_node: dict[str, Any]
) -> None:
    pod = engine_on_node
    assert pod["spec"]["nodeName"] == realnode.NODE_NAME
    assert pod["spec"]["volumes"][0]["image"]["reference"] == images.reference(images.SMOLLM2)
    base_url = f"http://{pod['status']['podIP']}:{contract.ENGINE_PORT}"
    status, body = engines.http_json(f"{base_url}/health")
    assert (status, body.get("status")) == (200, "ok")
    answer = ask(base_url)
    assert "Paris" in answer
    pieces, finish = ask_streamed(base_url)
    assert "".join(pieces) == answer
    assert finish in {"stop", "length"}
    logs = real_node.kubectl("logs", pod["metadata"]["name"]).stdout
    # The engine read the model from the image volume, at the path the image promises.
    assert engines.IMAGE_SMOLLM2 in logs


def test_kubelet_checkpoints_the_loaded_engine_without_copying_the_model(
    real_node: Cluster, engine_on_node: dict[str, Any]
) -> None:
    """The model is mapped from the image volume, so CRIU leaves it out of the checkpoint."""
    pod = engine_on_node
    name = pod["metadata"]["name"]
    base_url = f"http://{pod['status']['podIP']}:{contract.ENGINE_PORT}"
    before = ask(base_url)
    archive = realnode.checkpoint(real_node, "default", name, name)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getnames()
        assert any(m.startswith("checkpoint/pages-") for m in members), members[:20]
        assert archive.stat().st_size < engines.SMOLLM2_SIZE, archive.stat().st_size
        # The kubelet checkpoints without stopping: the same engine keeps answering.
        assert ask(base_url) == before
    finally:
        archive.unlink(missing_ok=True)
