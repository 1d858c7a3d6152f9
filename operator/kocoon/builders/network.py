"""Sandbox → headless Service (stable DNS) and NetworkPolicy (deny by default)."""

from __future__ import annotations

from typing import Any

from kocoon.api.conditions import ConditionType, Reason
from kocoon.api.sandbox import SandboxSpec
from kocoon.builders import names
from kocoon.builders.context import BuildSettings, Identity
from kocoon.status import ConditionUpdate

DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def _owned_metadata(owner: Identity, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": names.labels(owner.name, component),
        "ownerReferences": [
            names.owner_reference(owner.kind, owner.name, owner.uid, owner.api_version)
        ],
    }


def service(owner: Identity, spec: SandboxSpec) -> dict[str, Any]:
    """Headless: DNS resolves straight to the pod, and nothing is load-balanced."""
    ports = [
        {
            "name": p.name,
            "port": p.container_port,
            "targetPort": p.container_port,
            "protocol": p.protocol,
        }
        for p in spec.template.ports
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _owned_metadata(owner, names.service_name(owner.name), "sandbox"),
        "spec": {
            "clusterIP": "None",
            "selector": {names.SANDBOX_LABEL: owner.name},
            "publishNotReadyAddresses": False,
            "ports": ports,
        },
    }


def service_fqdn(owner: Identity, settings: BuildSettings) -> str:
    return f"{names.service_name(owner.name)}.{owner.namespace}.svc.{settings.cluster_domain}"


def network_policy(owner: Identity, spec: SandboxSpec, settings: BuildSettings) -> dict[str, Any]:
    """Ingress only from the router to exposed ports; egress only to what the spec allows.

    Host-name rules cannot be expressed in a NetworkPolicy: no egress is allowed for them, and
    the Sandbox says so (`egress_condition`: EgressEnforced=False, with an Event).
    """
    exposed = set(spec.network.exposed_ports)
    ingress_ports = [
        {"protocol": p.protocol, "port": p.container_port}
        for p in spec.template.ports
        if not exposed or p.name in exposed
    ]
    ingress: list[dict[str, Any]] = []
    if ingress_ports:
        ingress.append(
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {
                                "kubernetes.io/metadata.name": settings.router_namespace
                            }
                        },
                        "podSelector": {"matchLabels": dict(settings.router_pod_labels)},
                    }
                ],
                "ports": ingress_ports,
            }
        )
    egress: list[dict[str, Any]] = []
    if spec.network.egress.allow_dns:
        egress.append(
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": settings.dns_namespace}
                        },
                        "podSelector": {"matchLabels": dict(settings.dns_pod_labels)},
                    }
                ],
                "ports": DNS_PORTS,
            }
        )
    for rule in spec.network.egress.allow:
        if rule.cidr is None:
            continue
        entry: dict[str, Any] = {"to": [{"ipBlock": {"cidr": rule.cidr}}]}
        if rule.ports:
            entry["ports"] = [{"protocol": "TCP", "port": port} for port in rule.ports]
        egress.append(entry)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _owned_metadata(owner, names.network_policy_name(owner.name), "sandbox"),
        "spec": {
            "podSelector": {"matchLabels": {names.SANDBOX_LABEL: owner.name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def unenforced_egress_hosts(spec: SandboxSpec) -> list[str]:
    return [rule.host for rule in spec.network.egress.allow if rule.host is not None]


def egress_condition(spec: SandboxSpec) -> ConditionUpdate:
    """Whether the NetworkPolicy carries every egress rule of the spec. Host-name rules it
    cannot carry (no FQDN policy or egress gateway is driven): their traffic stays denied,
    and the condition names them instead of passing over them in silence."""
    hosts = unenforced_egress_hosts(spec)
    if not hosts:
        return ConditionUpdate(
            ConditionType.EGRESS_ENFORCED,
            True,
            Reason.EGRESS_POLICY_APPLIED,
            "every egress rule is in the NetworkPolicy",
        )
    return ConditionUpdate(
        ConditionType.EGRESS_ENFORCED,
        False,
        Reason.HOST_RULES_NOT_ENFORCED,
        f"spec.network.egress.allow: host rules are not enforced, so traffic to"
        f" {', '.join(hosts)} stays denied; allow it by cidr instead",
    )
