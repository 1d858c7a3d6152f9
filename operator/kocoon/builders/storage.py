"""Sandbox → the workspace PersistentVolumeClaim, kept across hibernation."""

from __future__ import annotations

from typing import Any

from kocoon.api.sandbox import SandboxSpec
from kocoon.builders import names
from kocoon.builders.context import Identity


def workspace_claim(owner: Identity, spec: SandboxSpec) -> dict[str, Any] | None:
    if spec.workspace is None:
        return None
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(spec.workspace.size)}},
    }
    if spec.workspace.storage_class_name:
        claim_spec["storageClassName"] = spec.workspace.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": names.workspace_claim_name(owner.name),
            "namespace": owner.namespace,
            "labels": names.labels(owner.name, "workspace"),
            "ownerReferences": [
                names.owner_reference(owner.kind, owner.name, owner.uid, owner.api_version)
            ],
        },
        "spec": claim_spec,
    }
