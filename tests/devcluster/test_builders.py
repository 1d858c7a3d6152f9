from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509

from kocoon.devcluster import nodes, pki

pytestmark = pytest.mark.unit


def test_every_gpu_slice_mode_has_a_node() -> None:
    offered = {key for spec in nodes.DEFAULT_NODES for key in spec.allocatable}
    assert {
        "nvidia.com/gpu",
        "nvidia.com/mig-1g.10gb",
        "nvidia.com/mig-3g.40gb",
        "nvidia.com/gpu.shared",
    } <= offered
    assert any(spec.dra_gpus for spec in nodes.DEFAULT_NODES)


def test_node_manifest_is_managed_by_kwok_and_carries_capacity() -> None:
    spec = nodes.DEFAULT_NODES[3]
    manifest = nodes.node_manifest(spec, "127.30.4.0/24")
    assert manifest["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert manifest["metadata"]["labels"][nodes.NODE_POOL_LABEL] == spec.pool
    assert manifest["status"]["capacity"] == spec.allocatable
    assert manifest["spec"]["podCIDRs"] == ["127.30.4.0/24"]


def test_pod_cidrs_are_loopback_and_distinct_per_node() -> None:
    cidrs = [nodes.pod_cidr(42, index) for index in range(len(nodes.DEFAULT_NODES))]
    networks = [ipaddress.ip_network(cidr) for cidr in cidrs]
    assert all(net.is_loopback for net in networks)
    assert len(set(networks)) == len(networks)


def test_resource_slice_lists_one_device_per_gpu() -> None:
    spec = next(spec for spec in nodes.DEFAULT_NODES if spec.dra_gpus)
    manifest = nodes.resource_slice_manifest(spec)
    assert manifest["spec"]["nodeName"] == spec.name
    assert [d["name"] for d in manifest["spec"]["devices"]] == [
        f"gpu-{i}" for i in range(spec.dra_gpus)
    ]


def test_issued_certificates_chain_to_the_ca() -> None:
    ca = pki.new_ca()
    leaf = pki.issue(ca, "kube-apiserver", ip_addresses=("127.0.0.1",), server=True)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)


def test_client_certificate_carries_groups_as_organizations() -> None:
    ca = pki.new_ca()
    cert = x509.load_pem_x509_certificate(
        pki.issue(ca, "someone", organizations=("system:masters",), client=True).cert_pem
    )
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
