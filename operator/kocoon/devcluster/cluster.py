"""The local cluster: real etcd, kube-apiserver, kube-controller-manager and kube-scheduler on
loopback, with kwok playing the nodes. Every process is recorded by PID in a state file, so
`down` stops exactly what `up` started and removes every file it wrote.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import ssl
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kocoon.devcluster import binaries, nodes, pki, processes, realnode

log = logging.getLogger("kocoon.devcluster")

DEFAULT_NAME = "dev"
ADMIN_USER = "kocoon-admin"
SERVICE_CIDR = "10.96.0.0/16"
# The default StorageClass of the local cluster; kwok provisions its volumes (kwok-stages.yaml).
STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {
        "name": "kocoon-local",
        "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
    },
    "provisioner": "kocoon.io/local",
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate",
}
# Order matters for start-up and reverse order for shutdown.
COMPONENT_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def registry_dir() -> Path:
    return binaries.cache_dir() / "clusters"


@dataclass
class ClusterState:
    """Everything needed to reach, inspect and tear down one running local cluster."""

    name: str
    directory: str
    network_octet: int
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return Path(self.directory) / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    @property
    def pod_network(self) -> str:
        return f"127.{self.network_octet}.0.0/16"

    def save(self) -> None:
        registry_dir().mkdir(parents=True, exist_ok=True)
        path = registry_dir() / f"{self.name}.json"
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, name: str) -> ClusterState | None:
        path = registry_dir() / f"{name}.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def running_clusters() -> list[ClusterState]:
    states = []
    for path in sorted(registry_dir().glob("*.json")):
        state = ClusterState.load(path.stem)
        if state is not None:
            states.append(state)
    return states


class Cluster:
    """A handle on a running local cluster."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def kubeconfig(self) -> Path:
        return self.state.kubeconfig

    @property
    def server(self) -> str:
        return self.state.server

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster."""
        return subprocess.run(
            [str(binaries.find("kubectl")), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def apply(self, *objects: dict[str, Any]) -> None:
        """Server-side apply of manifests (as the cluster's admin)."""
        document = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl(
            "apply",
            "--server-side",
            "--field-manager=kocoon-dev",
            "-f",
            "-",
            input=json.dumps(document),
        )

    def apply_files(self, *paths: Path) -> None:
        for path in paths:
            self.kubectl("apply", "--server-side", "--field-manager=kocoon-dev", "-f", str(path))

    def start_process(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Start a process that belongs to this cluster: `down` stops it with the rest."""
        log_path = Path(self.state.directory) / "logs" / f"{name}.log"
        previous = self.state.pids.get(name)
        if previous is not None:
            processes.stop(previous)
        pid = processes.spawn(argv, log_path, env=env)
        self.state.pids[name] = pid
        self.state.save()
        return pid

    def log_path(self, name: str) -> Path:
        return Path(self.state.directory) / "logs" / f"{name}.log"

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount, so its RBAC is what applies."""
        token = self.kubectl(
            "create", "token", name, "-n", namespace, "--duration=24h"
        ).stdout.strip()
        config = _kubeconfig(self.server, self._ca_pem(), user=f"{namespace}-{name}")
        config["users"][0]["user"] = {"token": token}
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _ca_pem(self) -> bytes:
        return (Path(self.state.directory) / "pki" / "ca.crt").read_bytes()

    def status(self) -> dict[str, Any]:
        components = {
            name: ("running" if processes.alive(pid) else "exited")
            for name, pid in self.state.pids.items()
        }
        return {
            "name": self.name,
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "podNetwork": self.state.pod_network,
            "components": components,
            "nodes": self.state.nodes,
        }

    def healthy(self) -> bool:
        """Whether the control plane runs (processes started on top of it do not count)."""
        return all(
            processes.alive(pid) for name, pid in self.state.pids.items() if name in COMPONENT_ORDER
        )


def _kubeconfig(server: str, ca_pem: bytes, user: str) -> dict[str, Any]:
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kocoon-dev",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "contexts": [{"name": "kocoon-dev", "context": {"cluster": "kocoon-dev", "user": user}}],
        "current-context": "kocoon-dev",
        "users": [{"name": user, "user": {}}],
    }


def _client_kubeconfig(server: str, ca: pki.KeyPair, identity: pki.KeyPair, user: str) -> str:
    import base64

    config = _kubeconfig(server, ca.cert_pem, user)
    config["users"][0]["user"] = {
        "client-certificate-data": base64.b64encode(identity.cert_pem).decode(),
        "client-key-data": base64.b64encode(identity.key_pem).decode(),
    }
    return yaml.safe_dump(config)


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def _pick_network_octet() -> int:
    taken = {state.network_octet for state in running_clusters()}
    free = [octet for octet in range(20, 250) if octet not in taken]
    return random.choice(free)


class _Starter:
    """Brings the components up one by one, recording each PID as soon as it exists."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.dir = Path(state.directory)
        self.pki = self.dir / "pki"
        self.logs = self.dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        argv: list[str],
        health_url: str,
        context: ssl.SSLContext | None,
        timeout: float = 90,
    ) -> None:
        log_path = self.logs / f"{name}.log"
        pid = processes.spawn(argv, log_path)
        self.state.pids[name] = pid
        self.state.save()
        started = time.monotonic()
        processes.wait_healthy(name, health_url, pid, log_path, context=context, timeout=timeout)
        self.state.timings[name] = round(time.monotonic() - started, 2)
        log.info("%s healthy after %.1f s (pid %d)", name, self.state.timings[name], pid)


def up(
    name: str = DEFAULT_NAME,
    *,
    nodes_spec: tuple[nodes.NodeSpec, ...] = nodes.DEFAULT_NODES,
    extra_manifests: tuple[Path, ...] = (),
    real_node: bool = False,
) -> Cluster:
    """Start a local cluster named `name` and return a handle once its nodes are Ready.

    With `real_node`, this machine also joins as a real node (kubelet + containerd), see
    `realnode`.
    """
    existing = ClusterState.load(name)
    if existing is not None:
        cluster = Cluster(existing)
        if cluster.healthy():
            if real_node and realnode.KUBELET not in existing.pids:
                _start_real_node(cluster)
            return cluster
        down(name)

    began = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix=f"kocoon-{name}-"))
    state = ClusterState(name=name, directory=str(directory), network_octet=_pick_network_octet())
    for component in (
        "etcd",
        "etcd-peer",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    ):
        state.ports[component] = processes.free_port()
    state.save()
    try:
        _start_all(state, nodes_spec, extra_manifests)
        if real_node:
            realnode.start(Cluster(state))
    except BaseException:
        log.error("start-up failed; logs were in %s", directory / "logs")
        down(name)
        raise
    state.timings["total"] = round(time.monotonic() - began, 2)
    state.save()
    return Cluster(state)


def _start_real_node(cluster: Cluster) -> None:
    try:
        realnode.start(cluster)
    except BaseException:
        realnode.stop(cluster.state)
        raise


def _start_all(
    state: ClusterState, nodes_spec: tuple[nodes.NodeSpec, ...], extra_manifests: tuple[Path, ...]
) -> None:
    starter = _Starter(state)
    d, p = starter.dir, state.ports
    ca = pki.new_ca()
    _write(starter.pki / "ca.crt", ca.cert_pem, 0o644)
    _write(starter.pki / "ca.key", ca.key_pem)
    serving = pki.issue(
        ca,
        "kube-apiserver",
        server=True,
        dns_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ip_addresses=("127.0.0.1", "10.96.0.1"),
    )
    _write(starter.pki / "apiserver.crt", serving.cert_pem, 0o644)
    _write(starter.pki / "apiserver.key", serving.key_pem)
    # The API server's identity towards kubelets (logs, exec, node proxy on a real node).
    kubelet_client = pki.issue(ca, "kube-apiserver-kubelet-client", client=True)
    _write(starter.pki / "apiserver-kubelet-client.crt", kubelet_client.cert_pem, 0o644)
    _write(starter.pki / "apiserver-kubelet-client.key", kubelet_client.key_pem)
    sa_private, sa_public = pki.new_service_account_key()
    _write(starter.pki / "sa.key", sa_private)
    _write(starter.pki / "sa.pub", sa_public, 0o644)
    server = state.server
    identities = {
        "admin": (ADMIN_USER, ("system:masters",)),
        "controller-manager": ("system:kube-controller-manager", ()),
        "scheduler": ("system:kube-scheduler", ()),
        "kwok": ("kocoon-kwok", ("system:masters",)),
    }
    kubeconfigs: dict[str, Path] = {}
    for key, (user, groups) in identities.items():
        identity = pki.issue(ca, user, organizations=groups, client=True)
        path = d / "kubeconfig" if key == "admin" else d / f"{key}.kubeconfig"
        kubeconfigs[key] = _write(path, _client_kubeconfig(server, ca, identity, user))

    tls = ssl.create_default_context(cafile=str(starter.pki / "ca.crt"))
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    etcd_url = f"http://127.0.0.1:{p['etcd']}"

    starter.start(
        "etcd",
        [
            str(binaries.find("etcd")),
            "--name=kocoon",
            f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
            f"--initial-cluster=kocoon=http://127.0.0.1:{p['etcd-peer']}",
            "--unsafe-no-fsync",
            "--log-level=warn",
            "--quota-backend-bytes=4294967296",
        ],
        f"{etcd_url}/health",
        None,
        timeout=30,
    )

    pki_dir = starter.pki
    starter.start(
        "kube-apiserver",
        [
            str(binaries.find("kube-apiserver")),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={p['kube-apiserver']}",
            f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
            f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
            f"--client-ca-file={pki_dir / 'ca.crt'}",
            f"--service-account-key-file={pki_dir / 'sa.pub'}",
            f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=RBAC,Node",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            f"--cert-dir={d / 'apiserver-certs'}",
            f"--kubelet-client-certificate={pki_dir / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki_dir / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
        ],
        f"{server}/readyz",
        tls,
        timeout=120,
    )

    starter.start(
        "kube-controller-manager",
        [
            str(binaries.find("kube-controller-manager")),
            f"--kubeconfig={kubeconfigs['controller-manager']}",
            f"--authentication-kubeconfig={kubeconfigs['controller-manager']}",
            f"--authorization-kubeconfig={kubeconfigs['controller-manager']}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-controller-manager']}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki_dir / 'sa.key'}",
            f"--root-ca-file={pki_dir / 'ca.crt'}",
            f"--cert-dir={d / 'controller-manager-certs'}",
            "--controllers=*,-nodeipam",
        ],
        f"https://127.0.0.1:{p['kube-controller-manager']}/healthz",
        insecure,
    )

    starter.start(
        "kube-scheduler",
        [
            str(binaries.find("kube-scheduler")),
            f"--kubeconfig={kubeconfigs['scheduler']}",
            f"--authentication-kubeconfig={kubeconfigs['scheduler']}",
            f"--authorization-kubeconfig={kubeconfigs['scheduler']}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-scheduler']}",
            "--leader-elect=false",
            f"--cert-dir={d / 'scheduler-certs'}",
        ],
        f"https://127.0.0.1:{p['kube-scheduler']}/healthz",
        insecure,
    )

    cluster = Cluster(state)
    node_objects = [
        nodes.node_manifest(spec, nodes.pod_cidr(state.network_octet, index))
        for index, spec in enumerate(nodes_spec)
    ]
    # kwok keeps a node's capacity only if the Node already has it when kwok first sees it.
    cluster.kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": node_objects}),
    )
    state.nodes = [spec.name for spec in nodes_spec]

    stages = resources.files("kocoon.devcluster").joinpath("kwok-stages.yaml").read_text()
    kwok_config = _write(d / "kwok.yaml", stages.replace("@VOLUME_ROOT@", str(d / "volumes")))
    cluster.apply(STORAGE_CLASS)
    starter.start(
        "kwok",
        [
            str(binaries.find("kwok")),
            f"--kubeconfig={kubeconfigs['kwok']}",
            f"--config={kwok_config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}={nodes.KWOK_ANNOTATION_VALUE}",
            "--node-ip=127.0.0.1",
            # Node heartbeats: without leases the node controller marks kwok nodes NotReady.
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{p['kwok']}",
        ],
        f"http://127.0.0.1:{p['kwok']}/healthz",
        None,
        timeout=30,
    )

    slices = [nodes.resource_slice_manifest(spec) for spec in nodes_spec if spec.dra_gpus]
    if slices:
        cluster.apply(*slices)
    manifests = tuple(extra_manifests) + cluster_manifests()
    cluster.apply_files(*manifests)
    cluster.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=60s")
    _wait_default_service_account(cluster)
    state.save()


def cluster_manifests() -> tuple[Path, ...]:
    """Cluster-wide objects every Kocoon cluster has: RuntimeClasses and the GPU DeviceClass."""
    root = project_root()
    if root is None:
        return ()
    gpu = root / "gpu"
    return tuple(
        sorted(path for path in gpu.glob("*.yaml") if not path.name.startswith("device-plugin"))
    )


def project_root() -> Path | None:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "gpu").is_dir() and (parent / "pyproject.toml").is_file():
            return parent
    return None


def _wait_default_service_account(cluster: Cluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            cluster.kubectl(
                "get", "serviceaccount", "default", "-n", "default", check=False
            ).returncode
            == 0
        ):
            return
        time.sleep(0.2)
    raise processes.ComponentFailedError("the default ServiceAccount was never created")


def down(name: str = DEFAULT_NAME) -> bool:
    """Stop every process of cluster `name` by PID and remove its files. False if none ran."""
    state = ClusterState.load(name)
    if state is None:
        return False
    # The real node first: its containers, mounts, bridge and cgroups go with its processes.
    if realnode.layout(state).directory.exists():
        realnode.stop(state)
    # Processes started on top of the control plane (operator, router, agent, ...) go first.
    extras = [name for name in state.pids if name not in COMPONENT_ORDER]
    for component in [*extras, *reversed(COMPONENT_ORDER)]:
        pid = state.pids.get(component)
        if pid is not None:
            processes.stop(pid)
    shutil.rmtree(state.directory, ignore_errors=True)
    (registry_dir() / f"{name}.json").unlink(missing_ok=True)
    return True


# The API key `make dev` creates for the dev cluster's model endpoint, kept in the cluster's
# directory so `kocoon dev env` can hand it to the `openai` SDK and curl.
DEV_API_KEY_FILE = "dev-api-key"


def env_lines(state: ClusterState) -> list[str]:
    """Shell exports for the cluster; with the router running, its URL, and with the dev API
    key made, what the `openai` SDK reads (OPENAI_BASE_URL, OPENAI_API_KEY)."""
    lines = [f"export KUBECONFIG={state.kubeconfig}", f"export KOCOON_CLUSTER={state.name}"]
    port = state.ports.get("kocoon-router")
    if port is None:
        return lines
    router = f"http://127.0.0.1:{port}"
    lines += [f"export KOCOON_ROUTER_URL={router}", f"export OPENAI_BASE_URL={router}/v1"]
    key_file = Path(state.directory) / DEV_API_KEY_FILE
    if key_file.exists():
        lines.append(f"export OPENAI_API_KEY={key_file.read_text().strip()}")
    return lines
