"""Sandbox → Pod: the isolated, hardened runtime."""

from __future__ import annotations

from typing import Any

from kocoon.api.sandbox import SandboxSpec
from kocoon.builders import gpu, names
from kocoon.builders.context import BuildSettings, Identity
from kocoon.defaults import runtime_class_for


def runtime_class(spec: SandboxSpec, settings: BuildSettings) -> str:
    return runtime_class_for(spec.runtime_class_name, spec.gpu is not None, settings)


def _container_security(spec: SandboxSpec, settings: BuildSettings) -> dict[str, Any]:
    """The container's security context: the template's user settings, within the limits.

    Untrusted, model-generated code runs here: no privilege, no escalation, no capability,
    whatever the template says. Under pod hardening it also runs as non-root: the template can
    name another non-root user but cannot turn runAsNonRoot off or ask for user 0.
    """
    security: dict[str, Any] = {}
    if spec.template.security_context is not None:
        security.update(spec.template.security_context.to_wire())
    security.update(
        {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    )
    if settings.pod_hardening:
        security["runAsNonRoot"] = True
        if security.get("runAsUser") == 0:
            del security["runAsUser"]  # the pod's non-root user applies
    return security


def _container(spec: SandboxSpec, settings: BuildSettings, hold: bool) -> dict[str, Any]:
    template = spec.template
    container: dict[str, Any] = {
        "name": names.CONTAINER_NAME,
        "image": template.image,
        "securityContext": _container_security(spec, settings),
    }
    if template.image_pull_policy:
        container["imagePullPolicy"] = template.image_pull_policy
    if hold:
        container["command"] = list(settings.restore_hold_command)
    elif template.command:
        container["command"] = list(template.command)
    if template.args and not hold:
        container["args"] = list(template.args)
    if template.working_dir:
        container["workingDir"] = template.working_dir
    if template.env:
        container["env"] = [env.to_wire() for env in template.env]
    if template.ports:
        container["ports"] = [port.to_wire() for port in template.ports]
    resources: dict[str, Any] = template.resources.to_wire() if template.resources else {}
    limits = gpu.extended_resources(spec.gpu, settings)
    if limits:
        resources["limits"] = {**resources.get("limits", {}), **limits}
    if spec.gpu is not None and spec.gpu.mode == "dra":
        resources["claims"] = [{"name": gpu.DRA_CLAIM_NAME}]
    if resources:
        container["resources"] = resources
    if spec.workspace is not None:
        container["volumeMounts"] = [
            {"name": names.WORKSPACE_VOLUME, "mountPath": spec.workspace.mount_path}
        ]
    return container


def _pod_security(settings: BuildSettings) -> dict[str, Any]:
    security: dict[str, Any] = {
        "fsGroup": settings.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if settings.pod_hardening:
        security.update(
            runAsNonRoot=True, runAsUser=settings.run_as_user, runAsGroup=settings.run_as_user
        )
    return security


def prefer_node(node_name: str) -> dict[str, Any]:
    """Affinity for the node a checkpoint lives on: asked for, but the scheduler decides. A pod
    placed elsewhere (the node is gone or full) cannot be restored into and wakes cold."""
    return {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "preference": {
                        "matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": [node_name]}
                        ]
                    },
                }
            ]
        }
    }


def pod(
    owner: Identity,
    spec: SandboxSpec,
    settings: BuildSettings,
    *,
    restore_from: str | None = None,
    node_name: str | None = None,
    hold_for_restore: bool = False,
) -> dict[str, Any]:
    """The sandbox's pod; `restore_from` names a checkpoint to restore, `node_name` pins it.

    `hold_for_restore`: the container runs the hold command, not the image's program: the node
    agent restores the checkpointed processes beside it.
    """
    template = spec.template
    metadata_labels = dict(template.metadata.labels or {}) if template.metadata else {}
    metadata_annotations = dict(template.metadata.annotations or {}) if template.metadata else {}
    metadata_labels.update(names.labels(owner.name, "sandbox"))
    if restore_from:
        metadata_annotations[names.RESTORE_FROM_ANNOTATION] = restore_from
        if hold_for_restore:
            metadata_annotations[names.HOLD_FOR_RESTORE_ANNOTATION] = "true"
    pod_spec: dict[str, Any] = {
        "runtimeClassName": runtime_class(spec, settings),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostname": names.pod_name(owner.name),
        "subdomain": names.service_name(owner.name),
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 10,
        "securityContext": _pod_security(settings),
        "containers": [_container(spec, settings, hold_for_restore and bool(restore_from))],
    }
    if spec.workspace is not None:
        pod_spec["volumes"] = [
            {
                "name": names.WORKSPACE_VOLUME,
                "persistentVolumeClaim": {"claimName": names.workspace_claim_name(owner.name)},
            }
        ]
    if spec.gpu is not None and spec.gpu.mode == "dra":
        pod_spec["resourceClaims"] = [
            {
                "name": gpu.DRA_CLAIM_NAME,
                "resourceClaimTemplateName": names.gpu_claim_template_name(owner.name),
            }
        ]
    if template.node_selector:
        pod_spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in template.tolerations]
    if template.priority_class_name:
        pod_spec["priorityClassName"] = template.priority_class_name
    if node_name:
        pod_spec["affinity"] = prefer_node(node_name)
    metadata: dict[str, Any] = {
        "name": names.pod_name(owner.name),
        "namespace": owner.namespace,
        "labels": metadata_labels,
        "ownerReferences": [
            names.owner_reference(owner.kind, owner.name, owner.uid, owner.api_version)
        ],
    }
    if metadata_annotations:
        metadata["annotations"] = metadata_annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
