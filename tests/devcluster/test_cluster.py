"""The local cluster is a real Kubernetes control plane: versions, RBAC, scheduling of GPU
slices, DRA allocation, loopback pod IPs, and a clean shutdown."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from typing import Any

import pytest

from kocoon.devcluster import Cluster, binaries, processes
from kocoon.devcluster import cluster as cluster_module

pytestmark = pytest.mark.integration


def _get(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def _wait_pod(cluster: Cluster, namespace: str, name: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = _get(cluster, "pod", name, "-n", namespace)
        if pod.get("status", {}).get("phase") == "Running":
            return pod
        time.sleep(0.2)
    raise AssertionError(f"pod {namespace}/{name} not Running: {pod.get('status')}")


def _pod(name: str, resources: dict[str, Any] | None = None, **spec: Any) -> str:
    container: dict[str, Any] = {"name": "main", "image": "busybox"}
    if resources:
        container["resources"] = resources
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [container], **spec},
        }
    )


def test_server_is_a_current_kubernetes(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert (int(version["major"]), int(version["minor"])) >= (1, 34)
    assert version["gitVersion"].startswith("v1.")


def test_authorization_is_rbac_not_always_allow(cluster: Cluster, tmp_path: Any) -> None:
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", "default")
    config = cluster.service_account_kubeconfig("default", "nobody", tmp_path / "nobody.yaml")
    denied = subprocess.run(
        [str(binaries.find("kubectl")), "--kubeconfig", str(config), "get", "secrets", "-A"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr


@pytest.mark.parametrize(
    ("resource", "pool"),
    [
        ("nvidia.com/mig-1g.10gb", "gpu-mig"),
        ("nvidia.com/mig-3g.40gb", "gpu-mig"),
        ("nvidia.com/gpu", "gpu-whole"),
        ("nvidia.com/gpu.shared", "gpu-shared"),
    ],
)
def test_gpu_slice_lands_only_on_a_node_that_offers_it(
    cluster: Cluster, resource: str, pool: str
) -> None:
    name = "gpu-" + resource.split("/")[1].replace(".", "-")
    cluster.kubectl(
        "apply", "-f", "-", input=_pod(name, {"limits": {resource: "1"}}, runtimeClassName="kata")
    )
    pod = _wait_pod(cluster, "default", name)
    node = _get(cluster, "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["kocoon.io/node-pool"] == pool
    cluster.kubectl("delete", "pod", name, "--wait=false")


def test_unsatisfiable_gpu_request_stays_pending_with_a_reason(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", "-", input=_pod("too-big", {"limits": {"nvidia.com/gpu": "64"}}))
    deadline = time.monotonic() + 20
    message = ""
    while time.monotonic() < deadline and "Insufficient nvidia.com/gpu" not in message:
        pod = _get(cluster, "pod", "too-big")
        conditions = pod.get("status", {}).get("conditions", [])
        message = " ".join(c.get("message", "") for c in conditions if c["type"] == "PodScheduled")
        time.sleep(0.2)
    assert "Insufficient nvidia.com/gpu" in message
    assert pod["status"]["phase"] == "Pending"
    cluster.kubectl("delete", "pod", "too-big", "--wait=false")


def test_dra_claim_is_allocated_from_the_simulated_resource_slice(cluster: Cluster) -> None:
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "one-gpu", "namespace": "default"},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]
                }
            }
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(template))
    pod = json.loads(_pod("dra-user", {"claims": [{"name": "gpu"}]}))
    pod["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    running = _wait_pod(cluster, "default", "dra-user")
    assert running["spec"]["nodeName"] == "kwok-gpu-dra-0"
    claims = _get(cluster, "resourceclaims", "-n", "default")["items"]
    results = [c["status"]["allocation"]["devices"]["results"] for c in claims]
    assert any(r[0]["driver"] == "gpu.nvidia.com" for r in results)
    cluster.kubectl("delete", "pod", "dra-user", "--wait=false")


def test_pod_ip_is_a_loopback_address_a_test_server_can_bind(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", "-", input=_pod("ip-check"))
    pod_ip = _wait_pod(cluster, "default", "ip-check")["status"]["podIP"]
    assert pod_ip.startswith(f"127.{cluster.state.network_octet}.")
    with socket.socket() as server:
        server.bind((pod_ip, 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
    cluster.kubectl("delete", "pod", "ip-check", "--wait=false")


def _listening_ports() -> set[int]:
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def test_a_second_cluster_runs_beside_and_down_leaves_nothing(cluster: Cluster) -> None:
    second = cluster_module.up(f"{cluster.name}-second")
    try:
        assert second.server != cluster.server
        assert second.state.network_octet != cluster.state.network_octet
        assert second.kubectl("get", "nodes").returncode == 0
        pids = dict(second.state.pids)
        ports = set(second.state.ports.values())
        directory = second.state.directory
    finally:
        assert cluster_module.down(second.name)
    assert not [name for name, pid in pids.items() if processes.alive(pid)]
    assert not ports & _listening_ports()
    assert not os.path.exists(directory)
    assert cluster.healthy()


def test_kwok_nodes_heartbeat_through_leases(cluster: Cluster) -> None:
    # Without node leases the node controller marks every kwok node NotReady after its grace
    # period and evicts the pods: the cluster would flap under longer tests.
    leases = _get(cluster, "leases", "-n", "kube-node-lease")["items"]
    assert {lease["metadata"]["name"] for lease in leases} >= set(cluster.state.nodes)
