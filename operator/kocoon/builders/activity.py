"""Sandbox → its activity Lease, which the router renews and the operator reads.

The operator applies only the Lease's identity (labels, owner); the router owns `spec` and
the activity annotations, so server-side apply keeps the two writers apart.
"""

from __future__ import annotations

from typing import Any

from kocoon.builders import names
from kocoon.builders.context import Identity


def activity_lease(owner: Identity) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": names.activity_lease_name(owner.name),
            "namespace": owner.namespace,
            "labels": {
                **names.labels(owner.name, "activity"),
                names.TARGET_KIND_LABEL: "sandbox",
                names.TARGET_NAME_LABEL: owner.name,
            },
            "ownerReferences": [
                names.owner_reference(owner.kind, owner.name, owner.uid, owner.api_version)
            ],
        },
    }
