"""The Helm chart renders, lints, and keeps its promises: hardened pods, least privilege."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kocoon.devcluster import Cluster, binaries

CHART = Path(__file__).resolve().parents[2] / "charts" / "kocoon"


def helm(*args: str) -> str:
    try:
        executable = binaries.find("helm")
    except binaries.MissingBinaryError as error:
        pytest.skip(str(error))
    return subprocess.run(
        [str(executable), *args], capture_output=True, text=True, check=True
    ).stdout


def rendered(*values: str) -> list[dict[str, Any]]:
    args = ["template", "kocoon", str(CHART), "--namespace", "kocoon-system"]
    for value in values:
        args += ["--set", value]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.unit
def test_chart_lints() -> None:
    assert "0 chart(s) failed" in helm("lint", str(CHART))


@pytest.mark.unit
def test_every_container_but_the_agent_is_hardened() -> None:
    docs = rendered()
    workloads = {**by_kind(docs, "Deployment"), **by_kind(docs, "DaemonSet")}
    assert set(workloads) == {"kocoon-operator", "kocoon-router", "kocoon-agent"}
    for name, workload in workloads.items():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            security = container["securityContext"]
            if name == "kocoon-agent":
                assert security == {"privileged": True}  # CRIU needs it; nothing else does
                continue
            assert security["runAsNonRoot"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.unit
def test_no_role_grants_nodes_proxy_or_wildcards() -> None:
    for role in by_kind(rendered(), "ClusterRole").values():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"], role["metadata"]["name"]
            assert "*" not in rule["resources"], role["metadata"]["name"]
            assert "nodes/proxy" not in rule["resources"], role["metadata"]["name"]


@pytest.mark.unit
def test_the_router_cannot_write_kocoon_resources() -> None:
    router = by_kind(rendered(), "ClusterRole")["kocoon-router"]
    for rule in router["rules"]:
        if "kocoon.io" in rule["apiGroups"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}


@pytest.mark.unit
def test_the_agent_may_only_read_create_and_delete_secrets() -> None:
    # Its data keys (keys.SecretKeyProvider) are all it asks the API server for.
    agent = by_kind(rendered(), "ClusterRole")["kocoon-agent"]
    assert agent["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "delete"]}
    ]


@pytest.mark.unit
def test_mtls_and_the_s3_copy_are_wired_into_the_agent_and_operator() -> None:
    from kocoon.agent.main import parser

    docs = rendered(
        "agent.mtls.enabled=true",
        "agent.s3.endpoint=https://s3.example.com",
        "agent.s3.bucket=checkpoints",
        "agent.s3.prefix=cluster-a/",
        "agent.s3.caSecret=s3-ca",
    )
    agent = by_kind(docs, "DaemonSet")["kocoon-agent"]["spec"]["template"]["spec"]
    container = agent["containers"][0]
    # The rendered flags are ones the agent's own command line accepts.
    args = parser().parse_args(container["args"][1:])
    assert args.client_ca == Path("/etc/kocoon/client-ca/ca.crt")
    assert args.client_cn == ["kocoon-operator"]
    assert (args.s3_endpoint, args.s3_bucket, args.s3_prefix) == (
        "https://s3.example.com",
        "checkpoints",
        "cluster-a/",
    )
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["secret"] for v in agent["volumes"] if "secret" in v}
    assert str(args.s3_access_key_file).startswith(mounts["s3-credentials"])
    assert str(args.s3_ca_file).startswith(mounts["s3-ca"])
    assert str(args.client_ca).startswith(mounts["client-ca"])
    assert volumes["client-ca"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert volumes["s3-credentials"]["secretName"] == "kocoon-agent-s3"

    operator = by_kind(docs, "Deployment")["kocoon-operator"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in operator["containers"][0]["env"]}
    client = {m["name"]: m["mountPath"] for m in operator["containers"][0]["volumeMounts"]}
    assert env["KOCOON_AGENT_CLIENT_CERT_FILE"] == client["agent-client"] + "/tls.crt"
    assert env["KOCOON_AGENT_CLIENT_KEY_FILE"] == client["agent-client"] + "/tls.key"
    secrets = {v["name"]: v["secret"] for v in operator["volumes"] if "secret" in v}
    assert secrets["agent-client"]["secretName"] == "kocoon-operator-client-tls"

    plain = by_kind(rendered(), "DaemonSet")["kocoon-agent"]["spec"]["template"]["spec"]
    assert not [a for a in plain["containers"][0]["args"] if "s3" in a or "client" in a]


@pytest.mark.unit
def test_the_agent_sees_the_nodes_containers_as_the_containerd_driver_needs() -> None:
    from kocoon.agent.main import parser

    agent = by_kind(rendered(), "DaemonSet")["kocoon-agent"]["spec"]["template"]["spec"]
    container = agent["containers"][0]
    args = parser().parse_args(container["args"][1:])
    assert agent["hostPID"] is True  # /proc/<pid>/ns of the pods' pause processes
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in agent["volumes"] if "hostPath" in v}
    for path in (args.cri_runc_root, args.restored_runc_root):
        mount = next(m for p, m in mounts.items() if str(path).startswith(p + "/"))
        assert host_paths[mount["name"]] == mount["mountPath"]  # the node's own paths
        assert mount["mountPropagation"] == "HostToContainer"
    for directory in ("/var/lib/kubelet", "/var/lib/containerd"):
        assert mounts[directory]["mountPropagation"] == "HostToContainer"
        assert host_paths[mounts[directory]["name"]] == directory


@pytest.mark.unit
def test_webhooks_can_be_turned_off() -> None:
    on = by_kind(rendered(), "Service")
    off = by_kind(rendered("webhooks.enabled=false"), "Service")
    assert "kocoon-operator-webhook" in on
    assert "kocoon-operator-webhook" not in off


@pytest.mark.integration
def test_chart_is_accepted_by_the_api_server(cluster: Cluster) -> None:
    manifest = helm("template", "kocoon", str(CHART), "--namespace", "kocoon-system")
    cluster.kubectl("create", "namespace", "kocoon-system", check=False)
    cluster.kubectl("apply", "--dry-run=server", "-n", "kocoon-system", "-f", "-", input=manifest)
