"""The kinds Kocoon reads and writes, and their REST paths. Pure."""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "kocoon.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The REST path of the collection, or of one object (and its subresource)."""
        base = (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else f"/apis/{self.api_version}"
        )
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
            if subresource is not None:
                base += f"/{subresource}"
        return base


POD = Kind("v1", "Pod", "pods")
SERVICE = Kind("v1", "Service", "services")
SECRET = Kind("v1", "Secret", "secrets")
PVC = Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
EVENT = Kind("v1", "Event", "events")
NAMESPACE = Kind("v1", "Namespace", "namespaces", namespaced=False)
NODE = Kind("v1", "Node", "nodes", namespaced=False)
NETWORK_POLICY = Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases")
RESOURCE_CLAIM_TEMPLATE = Kind(
    "resource.k8s.io/v1", "ResourceClaimTemplate", "resourceclaimtemplates"
)
RUNTIME_CLASS = Kind("node.k8s.io/v1", "RuntimeClass", "runtimeclasses", namespaced=False)
SANDBOX = Kind(API_VERSION, "Sandbox", "sandboxes")
AGENT_SESSION = Kind(API_VERSION, "AgentSession", "agentsessions")
MODEL_DEPLOYMENT = Kind(API_VERSION, "ModelDeployment", "modeldeployments")

BY_KIND: dict[tuple[str, str], Kind] = {
    (k.api_version, k.kind): k
    for k in (
        POD,
        SERVICE,
        SECRET,
        PVC,
        EVENT,
        NAMESPACE,
        NETWORK_POLICY,
        LEASE,
        RESOURCE_CLAIM_TEMPLATE,
        RUNTIME_CLASS,
        SANDBOX,
        AGENT_SESSION,
        MODEL_DEPLOYMENT,
    )
}


def kind_of(obj: dict[str, object]) -> Kind:
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    try:
        return BY_KIND[key]
    except KeyError:
        raise ValueError(
            f"unknown kind {key[1]} in {key[0]}: add it to kocoon.kube.resources"
        ) from None
