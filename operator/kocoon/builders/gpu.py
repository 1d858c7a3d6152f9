"""GPU slice → what the pod requests: extended resources, or a DRA ResourceClaimTemplate."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from kocoon.api.common import GpuSlice
from kocoon.builders import names
from kocoon.builders.context import BuildSettings, Identity

DRA_CLAIM_NAME = "gpu"
MIB = Decimal(1024 * 1024)


def extended_resources(gpu: GpuSlice | None, settings: BuildSettings) -> dict[str, str]:
    """Limits for device-plugin modes; empty for none and for DRA (which uses a claim)."""
    if gpu is None or gpu.mode == "dra":
        return {}
    resources = settings.gpu
    count = str(gpu.count)
    if gpu.mode == "wholeGPU":
        return {resources.whole: count}
    if gpu.mode == "mig":
        return {f"{resources.mig_prefix}{gpu.profile}": count}
    if gpu.mode == "timeSliced":
        return {resources.time_sliced: count}
    # hami: a share of one GPU's memory (in MiB, HAMi's unit) and optionally of its cores
    limits = {resources.whole: count}
    if gpu.memory is not None:
        limits[resources.hami_memory] = str(int(gpu.memory.value / MIB))
    if gpu.cores is not None:
        limits[resources.hami_cores] = str(gpu.cores)
    return limits


def claim_template(owner: Identity, gpu: GpuSlice | None) -> dict[str, Any] | None:
    """The ResourceClaimTemplate a DRA slice needs, or None for other modes."""
    if gpu is None or gpu.mode != "dra":
        return None
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": names.gpu_claim_template_name(owner.name),
            "namespace": owner.namespace,
            "labels": names.labels(owner.name, "gpu"),
            "ownerReferences": [
                names.owner_reference(owner.kind, owner.name, owner.uid, owner.api_version)
            ],
        },
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": DRA_CLAIM_NAME,
                            "exactly": {
                                "deviceClassName": gpu.device_class_name,
                                "allocationMode": "ExactCount",
                                "count": gpu.count,
                            },
                        }
                    ]
                }
            }
        },
    }
