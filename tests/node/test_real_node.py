"""A real node in the local cluster: pods really run, serve HTTP and can be checkpointed."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from nodekit import get_json, run_pod

from kocoon.devcluster import Cluster, ClusterState, down, images, nodes, realnode, up

pytestmark = pytest.mark.node


def _node(cluster: Cluster, name: str) -> dict[str, Any]:
    node: dict[str, Any] = json.loads(cluster.kubectl("get", "node", name, "-o", "json").stdout)
    return node


def test_real_node_registers_beside_the_kwok_nodes(real_node: Cluster) -> None:
    node = _node(real_node, realnode.NODE_NAME)
    labels = node["metadata"]["labels"]
    assert labels[realnode.REAL_NODE_LABEL] == "true"
    assert labels[nodes.NODE_POOL_LABEL] == realnode.NODE_POOL
    assert realnode.REAL_NODE_TAINT in [
        {k: t.get(k) for k in ("key", "value", "effect")} for t in node["spec"].get("taints", [])
    ]
    info = node["status"]["nodeInfo"]
    server = json.loads(real_node.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert info["kubeletVersion"] == server["gitVersion"]
    assert info["containerRuntimeVersion"].startswith("containerd://2.")
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"
    names = real_node.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert any(name.startswith("node/kwok-") for name in names)


def test_pod_serves_http_reachable_from_the_host(counter_pod: dict[str, Any]) -> None:
    assert counter_pod["spec"]["nodeName"] == realnode.NODE_NAME
    url = f"http://{counter_pod['status']['podIP']}:{images.COUNTER_PORT}/"
    first, second = get_json(url), get_json(url)
    assert first["count"] == 1
    assert second["count"] == 2
    assert second["token"] == first["token"]


def test_pod_logs_reach_the_api_server(real_node: Cluster, counter_pod: dict[str, Any]) -> None:
    get_json(f"http://{counter_pod['status']['podIP']}:{images.COUNTER_PORT}/")
    name = counter_pod["metadata"]["name"]
    logs = real_node.kubectl("logs", name).stdout
    assert "serving on :8080" in logs
    assert '"GET / HTTP/1.1" 200' in logs


def test_busybox_image_runs_a_command(real_node: Cluster) -> None:
    manifest = realnode.pod_manifest(
        "busybox-echo",
        images.reference(images.BUSYBOX),
        command=("sh", "-c", "echo hello from $(uname -s); exec sleep 3600"),
    )
    try:
        run_pod(real_node, manifest)
        assert "hello from Linux" in real_node.kubectl("logs", "busybox-echo").stdout
    finally:
        real_node.kubectl("delete", "pod", "busybox-echo", "--wait=false", check=False)


def test_kubelet_checkpoint_api_archives_a_running_container(
    real_node: Cluster, counter_pod: dict[str, Any]
) -> None:
    url = f"http://{counter_pod['status']['podIP']}:{images.COUNTER_PORT}/"
    before = get_json(url)
    name = counter_pod["metadata"]["name"]
    started = time.monotonic()
    archive = realnode.checkpoint(real_node, "default", name, name)
    took = time.monotonic() - started
    print(f"kubelet checkpoint of {name}: {took:.2f} s, {archive.stat().st_size} bytes")
    try:
        assert archive.is_relative_to(realnode.layout(real_node.state).checkpoints)
        with tarfile.open(archive) as tar:
            members = tar.getnames()
        assert any(m.startswith("checkpoint/pages-") for m in members), members[:20]
        assert "config.dump" in members
        # The kubelet checkpoints without stopping: the same process keeps counting.
        after = get_json(url)
        assert after["token"] == before["token"]
        assert after["count"] == before["count"] + 1
    finally:
        archive.unlink(missing_ok=True)


def _leftovers(state: ClusterState) -> list[str]:
    node = realnode.layout(state)
    found = []
    if subprocess.run(["ip", "link", "show", node.bridge], capture_output=True).returncode == 0:
        found.append(f"bridge {node.bridge}")
    mounts = Path("/proc/self/mountinfo").read_text()
    if state.directory in mounts:
        found.append(f"mounts under {state.directory}")
    found += [
        f"cgroup {hierarchy}{node.cgroup_root}"
        for hierarchy in Path("/sys/fs/cgroup").iterdir()
        if (hierarchy / node.cgroup_root.lstrip("/")).exists()
    ]
    found += [f"pid {pid}" for pid in state.pids.values() if Path(f"/proc/{pid}").exists()]
    if Path(state.directory).exists():
        found.append(state.directory)
    return found


def test_down_removes_everything_the_real_node_made(real_node: Cluster) -> None:
    """A second cluster with its own real node, with a running pod, torn down completely."""
    name = f"node-down-{os.getpid()}"
    cluster = up(name, real_node=True)
    state = cluster.state
    try:
        pod = run_pod(
            cluster,
            realnode.pod_manifest(
                "counter", images.reference(images.PYTHON), port=images.COUNTER_PORT
            ),
        )
        assert get_json(f"http://{pod['status']['podIP']}:{images.COUNTER_PORT}/")["count"] == 1
        assert _leftovers(state)  # the probe sees what a real node leaves while running
    finally:
        down(name)
    assert _leftovers(state) == []
