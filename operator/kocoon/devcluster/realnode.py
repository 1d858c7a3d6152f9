"""The optional real node of the local cluster: this machine, running a kubelet and containerd.

kwok nodes only simulate pods; hibernating and restoring real processes needs a node where pods
really run. `start` brings up containerd 2.x (runc shim, the CRIU built by setup/criu.sh on its
PATH), imports the locally built images, creates a bridge for the CNI `bridge` plugin and starts
the pinned kubelet, which registers beside the kwok nodes, labelled and tainted so only pods that
ask for it land there. `stop` undoes all of it: processes, containers, mounts, network
namespaces, the bridge, cgroups and the kernel settings the kubelet changes.

Everything lives under `<cluster dir>/node`; the cgroup parent is `/kocoon-<cluster>` and the
bridge `kocoon-br<octet>`, so clusters with different names do not collide.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kocoon.agent.criu import find_criu
from kocoon.config import OperatorConfig
from kocoon.devcluster import binaries, images, pki, processes

if TYPE_CHECKING:
    from kocoon.devcluster.cluster import Cluster, ClusterState

log = logging.getLogger("kocoon.devcluster.realnode")

NODE_NAME = "real-0"
NODE_POOL = "real"
REAL_NODE_LABEL = "kocoon.io/real-node"
# Pods must tolerate this taint (and select the label) to run on the real node: ordinary pods of
# other tests keep landing on kwok nodes, whose images need not exist.
REAL_NODE_TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
CONTAINERD = "containerd"
KUBELET = "kubelet"
CNI_BIN_DIR = Path("/usr/lib/cni")
RUNC = Path("/usr/sbin/runc")
CONTAINERD_NAMESPACE = "k8s.io"
PINNED_LABEL = "io.cri-containerd.pinned=pinned"
CGROUP_FS = Path("/sys/fs/cgroup")
# The kubelet sets these when `protectKernelDefaults` is false; `stop` puts the old values back.
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
)


CAP_SYS_RESOURCE = 24


def has_capability(bit: int, status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process may use a capability (its effective set has `bit`)."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


class RealNodeError(RuntimeError):
    """The real node could not start; the message names the failing piece and the fix."""


@dataclass(frozen=True)
class NodeLayout:
    """Paths, names and addresses of one cluster's real node; pure, derived from the state."""

    cluster: str
    directory: Path
    octet: int

    @property
    def bridge(self) -> str:
        return f"kocoon-br{self.octet}"

    @property
    def pod_subnet(self) -> str:
        # Not 127.x (the kwok nodes' loopback ranges) and not the service range 10.96/16.
        return f"10.244.{self.octet}.0/24"

    @property
    def node_ip(self) -> str:
        """The bridge's address: the kubelet serves here and pods route through it."""
        return f"10.244.{self.octet}.1"

    @property
    def cgroup_root(self) -> str:
        return f"/kocoon-{self.cluster}"

    @property
    def socket(self) -> Path:
        return self.directory / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.directory / "kubelet"

    @property
    def runc_root(self) -> Path:
        return self.directory / "runc"

    @property
    def containerd_state(self) -> Path:
        return self.directory / "containerd" / "state"

    @property
    def checkpoints(self) -> Path:
        return self.kubelet_root / "checkpoints"


def layout(state: ClusterState) -> NodeLayout:
    return NodeLayout(state.name, Path(state.directory) / "node", state.network_octet)


def criu_dir() -> Path | None:
    """The directory of the CRIU the node's runc uses: the agent's (setup/criu.sh's 4.2.1,
    which can checkpoint TCP sockets on kernels from 6.16; 4.1 cannot)."""
    criu = find_criu()
    return None if criu is None else criu.parent


# ---- pure configuration builders -------------------------------------------------------------


def containerd_config(node: NodeLayout, sandbox_image: str, restrict_oom: bool) -> str:
    """containerd's config (schema 3): private root, state, socket, runc root and CNI dirs."""
    root = node.directory / "containerd"
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    return f"""version = 3
root = '{root / "root"}'
state = '{node.containerd_state}'
# NRI listens on a fixed machine-wide socket; the node does not need it.
disabled_plugins = ['io.containerd.nri.v1.nri']

[grpc]
  address = '{node.socket}'

[ttrpc]
  address = '{node.socket}.ttrpc'

[plugins.'io.containerd.internal.v1.opt']
  path = '{root / "opt"}'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = '{sandbox_image}'

[{runtime}]
  netns_mounts_under_state_dir = true
  enable_criu = true
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which some hosts (VM sandboxes) drop from
  # the bounding set even for root; runc then fails with `failed to update
  # /proc/self/oom_score_adj: Permission denied`. Clamp to containerd's own score instead.
  restrict_oom_score_adj = {str(restrict_oom).lower()}

[{runtime}.containerd]
  default_runtime_name = 'runc'

[{runtime}.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'

[{runtime}.containerd.runtimes.runc.options]
  BinaryName = '{RUNC}'
  Root = '{node.runc_root}'
  SystemdCgroup = false

[{runtime}.cni]
  bin_dirs = ['{CNI_BIN_DIR}']
  conf_dir = '{node.directory / "cni" / "net.d"}'

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
"""


def cni_config(node: NodeLayout) -> dict[str, Any]:
    """A bridge network with host-local addresses; no masquerade: pods only talk to this host."""
    return {
        "cniVersion": "1.0.0",
        "name": f"kocoon-{node.cluster}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_subnet, "gateway": node.node_ip}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node.directory / "cni" / "ipam"),
                },
            }
        ],
    }


def kubelet_config(node: NodeLayout, port: int, healthz_port: int) -> dict[str, Any]:
    """The KubeletConfiguration for a cgroup v1 (hybrid) host without systemd."""
    pki_dir = node.directory / "pki"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # Since 1.35 the kubelet refuses cgroup v1 unless told otherwise; this host is v1 hybrid.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        "address": node.node_ip,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(pki_dir / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki_dir / "kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            # Bearer tokens (the agent's ServiceAccount) are checked with a TokenReview.
            "webhook": {"enabled": True, "cacheTTL": "30s"},
            "x509": {"clientCAFile": str(pki_dir / "ca.crt")},
        },
        # Any authenticated client may use the kubelet API: the API server (logs, exec), the
        # agent and tests (checkpoints). A local cluster only; real clusters use Webhook.
        "authorization": {"mode": "AlwaysAllow"},
        "registerWithTaints": [REAL_NODE_TAINT],
        "podLogsDir": str(node.directory / "pod-logs"),
        "failSwapOn": False,
        "makeIPTablesUtilChains": False,
        "resolvConf": "/etc/resolv.conf",
        "maxPods": 30,
        "serializeImagePulls": False,
        # The disk is shared with other work: evict only when it is really full, and never
        # garbage-collect the imported images (they cannot be pulled back).
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "featureGates": {"ContainerCheckpoint": True},
        "shutdownGracePeriod": "0s",
    }


def node_labels() -> dict[str, str]:
    from kocoon.devcluster import nodes

    return {REAL_NODE_LABEL: "true", nodes.NODE_POOL_LABEL: NODE_POOL, "type": "real"}


def kubeconfig(server: str, ca: pki.KeyPair, identity: pki.KeyPair, user: str) -> str:
    b64 = base64.b64encode
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kocoon",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": b64(ca.cert_pem).decode(),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(identity.cert_pem).decode(),
                        "client-key-data": b64(identity.key_pem).decode(),
                    },
                }
            ],
            "contexts": [{"name": "kocoon", "context": {"cluster": "kocoon", "user": user}}],
            "current-context": "kocoon",
        }
    )


# CRIU reads a process's resource limits (prlimit), which needs CAP_SYS_RESOURCE unless the
# process runs as CRIU's own user. Root on a normal node has it; some VMs drop it from the
# bounding set, and there only processes running as root can be checkpointed.
ROOT_SECURITY_CONTEXT = {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}


def criu_needs_root() -> bool:
    """Whether only processes running as root can be checkpointed on this machine."""
    return not has_capability(CAP_SYS_RESOURCE)


def counter_sandbox_template(*, as_root: bool) -> dict[str, Any]:
    """A Sandbox template running the in-memory counter (kocoon-counter) on the real node."""
    template: dict[str, Any] = {
        "image": images.reference(images.PYTHON),
        "imagePullPolicy": "Never",
        "ports": [{"name": "http", "containerPort": images.COUNTER_PORT}],
        "nodeSelector": {REAL_NODE_LABEL: "true"},
        "tolerations": [{**REAL_NODE_TAINT, "operator": "Equal"}],
    }
    if as_root:
        template["securityContext"] = dict(ROOT_SECURITY_CONTEXT)
    return template


# A RuntimeClass whose scheduling puts pods on the real node: objects whose pods the operator
# builds without a template of node selectors (ModelDeployment replicas) name it, the way a
# cluster's dedicated node pool is chosen.
RUNTIME_CLASS = "kocoon-real-node-runc"


def operator_config_env() -> dict[str, str]:
    """Operator configuration overrides that offer `kocoon-real-node-runc` next to the default
    runtime classes, as a runc class whose pods can be checkpointed with their memory."""
    defaults = OperatorConfig()
    return {
        "KOCOON_RUNTIME_CLASSES": json.dumps([*defaults.runtime_classes, RUNTIME_CLASS]),
        "KOCOON_MEMORY_CHECKPOINT_RUNTIME_CLASSES": json.dumps(
            [*defaults.memory_checkpoint_runtime_classes, RUNTIME_CLASS]
        ),
    }


def runtime_class() -> dict[str, Any]:
    """The RuntimeClass `kocoon-real-node-runc`: runc, scheduled onto the real node only."""
    return {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": RUNTIME_CLASS},
        "handler": "runc",
        "scheduling": {
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "tolerations": [{**REAL_NODE_TAINT, "operator": "Equal"}],
        },
    }


def pod_manifest(
    name: str,
    image: str,
    *,
    namespace: str = "default",
    command: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    port: int | None = None,
    runtime_class: str = "runc",
) -> dict[str, Any]:
    """A pod pinned to the real node, using a local image that must never be pulled."""
    container: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": "Never"}
    if command:
        container["command"] = list(command)
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if port is not None:
        container["ports"] = [{"containerPort": port}]
        container["readinessProbe"] = {
            "httpGet": {"path": "/healthz", "port": port},
            "periodSeconds": 1,
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "runtimeClassName": runtime_class,
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "tolerations": [{**REAL_NODE_TAINT, "operator": "Equal"}],
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


# ---- bring-up --------------------------------------------------------------------------------


def _write(path: Path, data: str | bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=120)


def preflight() -> None:
    """Fail early, naming what is missing and how to get it."""
    if os.geteuid() != 0:
        raise RealNodeError("the real node needs root (the kubelet, containerd and CNI do)")
    for name in (CONTAINERD, "containerd-shim-runc-v2", "ctr", KUBELET):
        binaries.find(name)
    for path, fix in (
        (RUNC, "apt-get install runc"),
        (CNI_BIN_DIR / "bridge", "apt-get install containernetworking-plugins"),
    ):
        if not path.exists():
            raise RealNodeError(f"{path} is missing: run setup/node.sh ({fix})")
    if shutil.which("iptables") is None:
        raise RealNodeError("iptables is missing (CRIU's network lock needs it): run setup/node.sh")
    if criu_dir() is None:
        raise RealNodeError("CRIU is not built: run setup/criu.sh (or setup/node.sh)")


def start(cluster: Cluster, timeout: float = 120) -> None:
    """Start containerd and the kubelet for `cluster`; returns when the node is Ready."""
    preflight()
    state = cluster.state
    node = layout(state)
    node.directory.mkdir(parents=True, exist_ok=True)
    logs = Path(state.directory) / "logs"
    began = time.monotonic()

    archives = images.build_all()
    state.timings["images"] = round(time.monotonic() - began, 2)

    _remember_kernel_tunables(node)
    _make_bridge(node)
    _make_cgroup_root(node)
    _write(
        node.directory / "cni" / "net.d" / "10-kocoon.conflist",
        json.dumps(cni_config(node), indent=2),
        0o644,
    )
    config = _write(
        node.directory / "containerd.toml",
        containerd_config(
            node, images.reference(images.PAUSE), restrict_oom=not has_capability(CAP_SYS_RESOURCE)
        ),
    )

    path_dirs = [
        str(criu_dir()),
        str(binaries.bin_dir()),
        os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    ]
    env = {**os.environ, "PATH": ":".join(path_dirs)}
    started = time.monotonic()
    pid = _spawn(
        [str(binaries.find(CONTAINERD)), "--config", str(config)], logs / "containerd.log", env
    )
    state.pids[CONTAINERD] = pid
    state.save()
    _wait_for(
        lambda: _ctr(node, "version", check=False).returncode == 0,
        "containerd",
        pid,
        logs / "containerd.log",
        30,
    )
    state.timings[CONTAINERD] = round(time.monotonic() - started, 2)

    started = time.monotonic()
    for name, archive in archives.items():
        _ctr(node, "images", "import", "--local", str(archive))
        _ctr(node, "images", "label", images.reference(name), PINNED_LABEL)
    state.timings["image-import"] = round(time.monotonic() - started, 2)

    kubelet_port, healthz_port = processes.free_port(), processes.free_port()
    state.ports[KUBELET] = kubelet_port
    _write_kubelet_pki(cluster, node)
    kubelet_conf = _write(
        node.directory / "kubelet.yaml",
        yaml.safe_dump(kubelet_config(node, kubelet_port, healthz_port)),
    )
    labels = ",".join(f"{k}={v}" for k, v in node_labels().items())
    started = time.monotonic()
    pid = _spawn(
        [
            str(binaries.find(KUBELET)),
            f"--config={kubelet_conf}",
            f"--kubeconfig={node.directory / 'kubelet.kubeconfig'}",
            f"--root-dir={node.kubelet_root}",
            f"--cert-dir={node.directory / 'pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={node.node_ip}",
            f"--node-labels={labels}",
            "--v=1",
        ],
        logs / "kubelet.log",
        env,
    )
    state.pids[KUBELET] = pid
    state.nodes.append(NODE_NAME)
    state.save()
    processes.wait_healthy(
        KUBELET, f"http://127.0.0.1:{healthz_port}/healthz", pid, logs / "kubelet.log", timeout=60
    )

    def ready() -> bool:
        done = cluster.kubectl(
            "get",
            "node",
            NODE_NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            check=False,
        )
        return done.stdout.strip() == "True"

    _wait_for(ready, "the real node's Ready condition", pid, logs / "kubelet.log", timeout)
    state.timings["kubelet-ready"] = round(time.monotonic() - started, 2)
    state.timings["real-node"] = round(time.monotonic() - began, 2)
    state.save()
    log.info(
        "real node %s Ready after %.1f s (kubelet %.1f s)",
        NODE_NAME,
        state.timings["real-node"],
        state.timings["kubelet-ready"],
    )


def _spawn(argv: list[str], log_path: Path, env: dict[str, str]) -> int:
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    return proc.pid


def _wait_for(predicate: Any, what: str, pid: int, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not processes.alive(pid):
            raise processes.ComponentFailedError(
                f"{what}: process exited:\n{processes.tail(log_path)}"
            )
        if predicate():
            return
        time.sleep(0.2)
    raise processes.ComponentFailedError(
        f"{what} not reached after {timeout:.0f} s:\n{processes.tail(log_path, 25)}"
    )


def _ctr(node: NodeLayout, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [
        str(binaries.find("ctr")),
        "--address",
        str(node.socket),
        "--namespace",
        CONTAINERD_NAMESPACE,
        *args,
    ]
    done = _run(*argv, check=False)
    if check and done.returncode != 0:
        raise RealNodeError(f"ctr {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _write_kubelet_pki(cluster: Cluster, node: NodeLayout) -> None:
    pki_dir = Path(cluster.state.directory) / "pki"
    ca = pki.KeyPair((pki_dir / "ca.crt").read_bytes(), (pki_dir / "ca.key").read_bytes())
    ours = node.directory / "pki"
    _write(ours / "ca.crt", ca.cert_pem, 0o644)
    # NodeRestriction: a kubelet is `system:node:<name>` in `system:nodes`.
    identity = pki.issue(
        ca, f"system:node:{NODE_NAME}", organizations=("system:nodes",), client=True
    )
    _write(
        node.directory / "kubelet.kubeconfig",
        kubeconfig(cluster.server, ca, identity, f"system:node:{NODE_NAME}"),
    )
    serving = pki.issue(
        ca,
        NODE_NAME,
        server=True,
        dns_names=(NODE_NAME, "localhost"),
        ip_addresses=(node.node_ip, "127.0.0.1"),
    )
    _write(ours / "kubelet.crt", serving.cert_pem, 0o644)
    _write(ours / "kubelet.key", serving.key_pem)
    # A client identity for callers of the kubelet API (checkpoints) outside the API server.
    client = pki.issue(ca, "kocoon-node-client", client=True)
    _write(ours / "client.crt", client.cert_pem, 0o644)
    _write(ours / "client.key", client.key_pem)


def _make_bridge(node: NodeLayout) -> None:
    """The bridge exists before the kubelet, so the node IP it serves on exists too."""
    if _run("ip", "link", "show", node.bridge, check=False).returncode != 0:
        _run("ip", "link", "add", node.bridge, "type", "bridge")
    _run("ip", "addr", "replace", f"{node.node_ip}/24", "dev", node.bridge)
    _run("ip", "link", "set", node.bridge, "up")


def _cgroup_hierarchies() -> list[Path]:
    """Mounted cgroup v1 hierarchies (and the hybrid cgroup2 mount) on this host."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] in ("cgroup", "cgroup2") and fields[1].startswith(str(CGROUP_FS)):
            found.append(Path(fields[1]))
    return found


def _make_cgroup_root(node: NodeLayout) -> None:
    # The kubelet refuses a cgroupRoot that does not exist in every hierarchy it manages.
    for hierarchy in _cgroup_hierarchies():
        target = hierarchy / node.cgroup_root.lstrip("/")
        target.mkdir(exist_ok=True)
        if (hierarchy / "cpuset.cpus").exists():
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (target / knob).write_text((hierarchy / knob).read_text())


def _remember_kernel_tunables(node: NodeLayout) -> None:
    saved = {name: (Path("/proc/sys") / name).read_text().strip() for name in KERNEL_TUNABLES}
    _write(node.directory / "kernel-tunables.json", json.dumps(saved))


# ---- the kubelet API -------------------------------------------------------------------------


def kubelet_ssl_context(node: NodeLayout) -> ssl.SSLContext:
    pki_dir = node.directory / "pki"
    context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    context.load_cert_chain(str(pki_dir / "client.crt"), str(pki_dir / "client.key"))
    return context


@dataclass(frozen=True)
class KubeletEndpoint:
    """How a client on this machine reaches the real node's kubelet API (e.g. the agent's
    `--kubelet-url`, `--kubelet-ca`, `--kubelet-checkpoint-dir`)."""

    url: str
    ca_file: Path
    client_cert: Path
    client_key: Path
    checkpoint_dir: Path


def kubelet_endpoint(state: ClusterState) -> KubeletEndpoint:
    node = layout(state)
    pki_dir = node.directory / "pki"
    return KubeletEndpoint(
        url=f"https://{node.node_ip}:{state.ports[KUBELET]}",
        ca_file=pki_dir / "ca.crt",
        client_cert=pki_dir / "client.crt",
        client_key=pki_dir / "client.key",
        checkpoint_dir=node.checkpoints,
    )


def checkpoint(
    cluster: Cluster, namespace: str, pod: str, container: str, timeout: float = 120
) -> Path:
    """Checkpoint a running container through the kubelet API; returns the archive's path."""
    node = layout(cluster.state)
    url = f"https://{node.node_ip}:{cluster.state.ports[KUBELET]}/checkpoint/{namespace}/{pod}/{container}"
    request = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(
        request, context=kubelet_ssl_context(node), timeout=timeout
    ) as response:
        body = json.loads(response.read())
    return Path(body["items"][0])


# ---- tear-down -------------------------------------------------------------------------------


def stop(state: ClusterState) -> None:
    """Stop the kubelet, every container, containerd; remove what they left on the host."""
    node = layout(state)
    if KUBELET in state.pids:
        processes.stop(state.pids[KUBELET])
    if CONTAINERD in state.pids:
        if processes.alive(state.pids[CONTAINERD]):
            # Restored containers first: they hold their wake pod's log pipes, and containerd
            # does not finish stopping a container while its output is still open.
            _kill_runc_containers(node, lambda root: root.name != CONTAINERD_NAMESPACE)
            _remove_containers(node)
        processes.stop(state.pids[CONTAINERD])
    _kill_leftovers(node)
    _unmount_under(node.directory)
    _remove_cgroups(node)
    _run("ip", "link", "del", node.bridge, check=False)
    _restore_kernel_tunables(node)


def _remove_containers(node: NodeLayout) -> None:
    listed = _ctr(node, "containers", "list", "--quiet", check=False).stdout.split()
    for container in listed:
        _ctr(node, "tasks", "kill", "--all", "--signal", "SIGKILL", container, check=False)
    for container in listed:
        _ctr(node, "tasks", "delete", "--force", container, check=False)
        _ctr(node, "containers", "delete", container, check=False)


def _kill_runc_containers(node: NodeLayout, which: Callable[[Path], bool]) -> None:
    for root in node.runc_root.iterdir() if node.runc_root.is_dir() else ():
        if not which(root):
            continue
        for container in root.iterdir():
            runc = (str(RUNC), "--root", str(root))
            _run(*runc, "kill", "--all", container.name, "KILL", check=False)
            _run(*runc, "delete", "--force", container.name, check=False)


def _kill_leftovers(node: NodeLayout) -> None:
    """Containers and shims whose containerd is gone: found by our runc root or our socket.

    Every runc root under the node's directory counts: containerd's namespace (`k8s.io`) and
    the ones restores made outside containerd.
    """
    _kill_runc_containers(node, lambda root: True)
    marker = str(node.socket).encode()
    # Any process configured from the node's directory (a kubelet or containerd whose PID the
    # state lost, e.g. after the node was added again) is ours too.
    directory = str(node.directory).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if (b"containerd-shim" in cmdline and marker in cmdline) or directory in cmdline:
            processes.stop(int(proc.name), grace_seconds=2)


def _unmount_under(directory: Path) -> None:
    prefix = str(directory)
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            mounts.append(point)
    # Deepest first, lazily: a mount busy for a moment must not keep the tree alive.
    for point in sorted(set(mounts), key=len, reverse=True):
        _run("umount", "--lazy", point, check=False)


def _remove_cgroups(node: NodeLayout) -> None:
    for hierarchy in _cgroup_hierarchies():
        top = hierarchy / node.cgroup_root.lstrip("/")
        if not top.is_dir():
            continue
        for directory in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            _rmdir(directory)
        _rmdir(top)


def _rmdir(directory: Path) -> None:
    for _ in range(50):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            # A cgroup is busy until its last process has exited; that takes a moment.
            time.sleep(0.1)
    log.warning("cgroup %s is still busy; left in place", directory)


def _restore_kernel_tunables(node: NodeLayout) -> None:
    saved_path = node.directory / "kernel-tunables.json"
    if not saved_path.exists():
        return
    for name, value in json.loads(saved_path.read_text()).items():
        target = Path("/proc/sys") / name
        if target.read_text().strip() != value:
            target.write_text(value)
