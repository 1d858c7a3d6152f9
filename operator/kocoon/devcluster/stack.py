"""Kocoon on the local cluster: CRDs, the chart's RBAC, and the operator, router and agent
as processes on this machine, each with exactly the permissions the chart grants it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from kocoon.agent import local as local_agent
from kocoon.devcluster import binaries, realnode
from kocoon.devcluster.cluster import Cluster, project_root
from kocoon.devcluster.processes import free_port, stop, wait_healthy

NAMESPACE = "kocoon-system"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def _root() -> Path:
    root = project_root()
    if root is None:
        raise FileNotFoundError(
            "the Kocoon project files (crds/, charts/) are not next to the package"
        )
    return root


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(_root() / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=30s")


def chart_rbac(component: str) -> list[dict[str, Any]]:
    """The RBAC objects the chart renders for one component (operator, router, agent)."""
    rendered = subprocess.run(
        [
            str(binaries.find("helm")),
            "template",
            "kocoon",
            str(_root() / "charts" / "kocoon"),
            "--namespace",
            NAMESPACE,
            "--show-only",
            f"templates/{component}.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] in RBAC_KINDS]


def component_kubeconfig(cluster: Cluster, component: str, directory: Path) -> Path:
    """Install the chart's RBAC for `component` and return a kubeconfig for its account."""
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.apply(*chart_rbac(component))
    return cluster.service_account_kubeconfig(
        NAMESPACE, f"kocoon-{component}", directory / f"{component}.kubeconfig"
    )


def kocoon_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kocoon.cli", *args]


def start_operator(
    cluster: Cluster, *, webhooks: bool = True, env: dict[str, str] | None = None
) -> int:
    directory = Path(cluster.state.directory)
    kubeconfig = component_kubeconfig(cluster, "operator", directory)
    environment = {**os.environ, "KOCOON_NAMESPACE": NAMESPACE, **(env or {})}
    args = ["operator", "--kubeconfig", str(kubeconfig)]
    if webhooks:
        environment.update(
            {
                "KOCOON_WEBHOOK_ADDR": "127.0.0.1",
                "KOCOON_WEBHOOK_HOST": "127.0.0.1",
                "KOCOON_WEBHOOK_PORT": str(free_port()),
            }
        )
        args.append("--webhooks")
    return cluster.start_process("kocoon-operator", kocoon_command(*args), env=environment)


def stop_process(cluster: Cluster, name: str) -> None:
    """Stop a process started with the cluster (operator, router, agent, workloads)."""
    pid = cluster.state.pids.pop(name, None)
    if pid is not None:
        stop(pid)
        cluster.state.save()


def start_router(cluster: Cluster, *extra_args: str) -> tuple[int, str]:
    """Start the router; returns its PID and base URL."""
    directory = Path(cluster.state.directory)
    kubeconfig = component_kubeconfig(cluster, "router", directory)
    port, admin = free_port(), free_port()
    pid = cluster.start_process(
        "kocoon-router",
        kocoon_command(
            "router",
            "--kubeconfig",
            str(kubeconfig),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--activity-interval",
            "1",
            *extra_args,
        ),
    )
    cluster.state.ports["kocoon-router"] = port
    cluster.state.ports["kocoon-router-admin"] = admin
    cluster.state.save()
    # Ready once every watch has listed: the routing table is complete.
    wait_healthy(
        "kocoon router",
        f"http://127.0.0.1:{admin}/readyz",
        pid,
        cluster.log_path("kocoon-router"),
        timeout=60,
    )
    return pid, f"http://127.0.0.1:{port}"


def start_workloads(cluster: Cluster) -> int:
    """Real servers on the pod IPs of kwok pods (see workloads.py)."""
    return cluster.start_process(
        "kocoon-workloads",
        [
            sys.executable,
            "-m",
            "kocoon.devcluster.workloads",
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
    )


def start_agent(cluster: Cluster) -> dict[str, str]:
    """Start the node agent on this machine for the cluster's nodes; returns the operator's
    environment for reaching it (endpoint, token, CA)."""
    directory = Path(cluster.state.directory) / "agent"
    creds = local_agent.credentials(directory)
    port = free_port()
    extra: tuple[str, ...] = ()
    node_name = "local"
    if realnode.KUBELET in cluster.state.pids:
        # The real node's pods: containerd's runc state, and a root for restored containers.
        node = realnode.layout(cluster.state)
        node_name = realnode.NODE_NAME
        extra = (
            "--cri-runc-root", str(node.runc_root / realnode.CONTAINERD_NAMESPACE),
            "--restored-runc-root", str(node.runc_root / "kocoon-restored"),
        )  # fmt: skip
    pid = cluster.start_process(
        "kocoon-agent",
        local_agent.command(
            creds, port, directory / "state", node_name=node_name, extra_args=extra
        ),
    )
    wait_healthy(
        "kocoon agent", f"https://127.0.0.1:{port}/healthz", pid,
        cluster.log_path("kocoon-agent"), context=creds.client_context(), timeout=30,
    )  # fmt: skip
    return {
        "KOCOON_AGENT_ENDPOINTS": json.dumps({"*": f"https://127.0.0.1:{port}"}),
        "KOCOON_AGENT_TOKEN_FILE": str(creds.token_file),
        "KOCOON_AGENT_CA_FILE": str(creds.cert),
    }
