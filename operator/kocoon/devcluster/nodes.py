"""Pure builders for the simulated (kwok) nodes of the local cluster and their GPU devices.

The node pool mirrors what a GPU cluster offers, so scheduling of every GPU slice mode is
exercised against the real scheduler: whole GPUs, MIG profiles (mixed strategy), time-sliced
shares, and DRA devices published as ResourceSlices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
NODE_POOL_LABEL = "kocoon.io/node-pool"
DRA_DRIVER = "gpu.nvidia.com"


@dataclass(frozen=True)
class NodeSpec:
    """One simulated node: its pool, what it can allocate, and extra labels."""

    name: str
    pool: str
    allocatable: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    dra_gpus: int = 0


BASE = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "200Gi"}
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559"}

DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("kwok-cpu-0", "cpu", dict(BASE)),
    NodeSpec("kwok-cpu-1", "cpu", dict(BASE)),
    NodeSpec(
        "kwok-gpu-whole-0",
        "gpu-whole",
        {**BASE, "nvidia.com/gpu": "8"},
        {**H100, "nvidia.com/gpu.count": "8"},
    ),
    NodeSpec(
        "kwok-gpu-mig-0",
        "gpu-mig",
        {**BASE, "nvidia.com/mig-1g.10gb": "7", "nvidia.com/mig-3g.40gb": "2"},
        {**H100, "nvidia.com/mig.strategy": "mixed", "nvidia.com/mig.capable": "true"},
    ),
    NodeSpec(
        "kwok-gpu-shared-0",
        "gpu-shared",
        {**BASE, "nvidia.com/gpu.shared": "16"},
        {**H100, "nvidia.com/gpu.sharing-strategy": "time-slicing", "nvidia.com/gpu.replicas": "4"},
    ),
    NodeSpec("kwok-gpu-dra-0", "gpu-dra", dict(BASE), dict(H100), dra_gpus=4),
)


def node_manifest(spec: NodeSpec, pod_cidr: str) -> dict[str, Any]:
    """A Node object kwok will manage; status carries the capacity the scheduler sees."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE},
            "labels": {
                "kubernetes.io/hostname": spec.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                NODE_POOL_LABEL: spec.pool,
                **spec.labels,
            },
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "allocatable": dict(spec.allocatable),
            "capacity": dict(spec.allocatable),
        },
    }


def resource_slice_manifest(spec: NodeSpec) -> dict[str, Any]:
    """The DRA ResourceSlice a GPU driver would publish for this node (resource.k8s.io/v1)."""
    devices = [
        {
            "name": f"gpu-{index}",
            "attributes": {
                "productName": {"string": "NVIDIA H100 80GB HBM3"},
                "architecture": {"string": "Hopper"},
                "index": {"int": index},
            },
            "capacity": {"memory": {"value": "80Gi"}},
        }
        for index in range(spec.dra_gpus)
    ]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{spec.name}-{DRA_DRIVER}"},
        "spec": {
            "driver": DRA_DRIVER,
            "nodeName": spec.name,
            "pool": {"name": spec.name, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


def pod_cidr(network_octet: int, node_index: int) -> str:
    """Pod IPs are loopback addresses, so a test can run a real server where a pod would be."""
    return f"127.{network_octet}.{node_index + 1}.0/24"
