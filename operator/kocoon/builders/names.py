"""Names, labels and annotations of the objects Kocoon creates for a Sandbox. One place."""

from __future__ import annotations

from typing import Any

SANDBOX_LABEL = "kocoon.io/sandbox"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kocoon"
CONTAINER_NAME = "sandbox"
WORKSPACE_VOLUME = "workspace"

# Written by the operator on the pod it creates to restore a checkpoint into.
RESTORE_FROM_ANNOTATION = "kocoon.io/restore-from-checkpoint"
# On a pod whose container only holds the place (runs the hold command) until the node agent
# restores the checkpointed processes beside it; set to the checkpoint id once restored.
HOLD_FOR_RESTORE_ANNOTATION = "kocoon.io/hold-for-restore"
RESTORED_ANNOTATION = "kocoon.io/restored-checkpoint"

# Activity contract with the router (docs/router.md): one Lease per target.
ACTIVITY_LEASE_PREFIX = "kocoon-activity-sandbox-"
WAKE_REQUESTED_ANNOTATION = "kocoon.io/wake-requested-at"
LAST_REQUEST_ANNOTATION = "kocoon.io/last-request-at"
IN_FLIGHT_ANNOTATION = "kocoon.io/in-flight"
TARGET_KIND_LABEL = "kocoon.io/target-kind"
TARGET_NAME_LABEL = "kocoon.io/target-name"


def pod_name(sandbox: str) -> str:
    # One pod per sandbox with a fixed name: a second create answers 409, so a restarted
    # operator can never start a second pod for the same sandbox.
    return sandbox


def service_name(sandbox: str) -> str:
    return sandbox


def workspace_claim_name(sandbox: str) -> str:
    return f"{sandbox}-workspace"


def network_policy_name(sandbox: str) -> str:
    return f"{sandbox}-sandbox"


def gpu_claim_template_name(sandbox: str) -> str:
    return f"{sandbox}-gpu"


def activity_lease_name(sandbox: str) -> str:
    return f"{ACTIVITY_LEASE_PREFIX}{sandbox}"


def labels(sandbox: str, component: str) -> dict[str, str]:
    return {SANDBOX_LABEL: sandbox, COMPONENT_LABEL: component, MANAGED_BY_LABEL: MANAGED_BY}


def owner_reference(kind: str, name: str, uid: str, api_version: str) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
