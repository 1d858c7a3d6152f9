"""Scale benchmark: N Sandboxes with Kocoon and with the agent-sandbox controller, one run.

    python bench/bench_scale.py [--count 1000] [--creators 10] [--rest-seconds 60]
    python bench/bench_scale.py --only kocoon          # Kocoon alone (the peer cannot be built)

One local cluster (`kocoon dev up`'s code: etcd, kube-apiserver, controller-manager,
scheduler, kwok). Each controller gets its own pool of kwok nodes of the same size, tainted
and labelled `kocoon.io/bench=<controller>`, and the same pause pod (image, requests,
runtimeClassName runc, the pool's nodeSelector and toleration). The controllers run one after
the other, each as a process on this machine with its own ServiceAccount's kubeconfig:

- Kocoon: `kocoon operator --webhooks` with the chart's RBAC (as `make dev` runs it), no
  node agent (a deleted Sandbox's agent call is skipped as "no agent serves that node");
- the peer: `agent-sandbox-controller` v1.0.x (binaries/agent-sandbox, built by
  setup/agent-sandbox.sh) with the RBAC and CRD that ship in its module, no leader election
  (it has no webhook in v1.0).

For each: a warm-up Sandbox (so caches are synced and webhooks serve), then N Sandboxes created
by `--creators` parallel clients; it reports the time until every pod is Running and every
Sandbox Ready, the controller's RSS (idle before, at Ready, peak = VmHWM, after deletion) and
CPU seconds, API requests made by the controller (per object to Ready and to delete, per
minute at rest with the N Sandboxes idle and after all are deleted), and the time to delete
all (one DELETE of the collection until no Sandbox and no pod is left).

API requests per controller are counted by the kube-apiserver itself: each controller's
ServiceAccount is matched by its own FlowSchema (same priority level, workload-low, that
service accounts get by default, so nothing about throttling changes) and the bench reads
`apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}` before and after. The
busiest (verb, resource, code) of `apiserver_request_total` (all clients) in each rest window
are printed too.

Results are printed and written as JSON to bench/results/ (not committed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from kocoon.devcluster import Cluster, binaries, down, nodes, stack, up
from kocoon.devcluster.processes import alive, free_port, stop, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
BENCH_LABEL = "kocoon.io/bench"
IMAGE = "kocoon.local/pause:local"
REQUESTS = {"cpu": "10m", "memory": "16Mi"}
PODS_PER_NODE = 200
PEER = "agent-sandbox"
KOCOON = "kocoon"
PEER_NAMESPACE = "agent-sandbox-system"
PEER_ACCOUNT = "agent-sandbox-controller"


def log(message: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- a small API client (admin kubeconfig) ------------------------------------------------


class Kube:
    """aiohttp on the cluster's admin kubeconfig: create, list, watch, delete, metrics."""

    def __init__(self, kubeconfig: Path, scratch: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        self.server = cluster["server"]
        context = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        cert, key = scratch / "admin.crt", scratch / "admin.key"
        cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
        key.write_bytes(base64.b64decode(user["client-key-data"]))
        key.chmod(0o600)
        context.load_cert_chain(cert, key)
        self.ssl = context
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Kube:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl, limit=64),
            read_bufsize=2**20,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    def _s(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        async with self._s().request(method, self.server + path, json=body) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except json.JSONDecodeError:
                return response.status, text

    async def metrics(self) -> str:
        async with self._s().get(self.server + "/metrics") as response:
            response.raise_for_status()
            return await response.text()

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[dict[str, Any]]:
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "240",
        }
        async with self._s().get(self.server + path, params=params) as response:
            response.raise_for_status()
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


class Collection:
    """List + watch of one collection: name → whether the object counts as ready."""

    def __init__(self, kube: Kube, path: str, ready: Callable[[dict[str, Any]], bool]) -> None:
        self.kube, self.path, self.ready = kube, path, ready
        self.items: dict[str, bool] = {}
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Collection:
        self.task = asyncio.create_task(self._run())
        return self

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def ready_count(self) -> int:
        return sum(self.items.values())

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def _run(self) -> None:
        while True:
            status, listing = await self.kube.request("GET", self.path)
            if status != 200:
                await asyncio.sleep(0.5)
                continue
            version = listing["metadata"]["resourceVersion"]
            self.items = {i["metadata"]["name"]: self.ready(i) for i in listing["items"]}
            self._notify()
            relist = False
            while not relist:
                try:
                    async for event in self.kube.watch(self.path, version):
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            relist = True  # 410 Gone: list again
                            break
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        name = obj["metadata"]["name"]
                        if event["type"] == "DELETED":
                            self.items.pop(name, None)
                        else:
                            self.items[name] = self.ready(obj)
                        self._notify()
                except (TimeoutError, aiohttp.ClientError):
                    relist = True

    async def wait(self, what: str, predicate: Callable[[], bool], limit: float) -> None:
        deadline = time.monotonic() + limit
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{what}: not reached after {limit:.0f} s"
                    f" ({self.ready_count} ready of {self.total})"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return bool(condition.get("status") == "True")
    return False


def pod_running(pod: dict[str, Any]) -> bool:
    return bool((pod.get("status") or {}).get("phase") == "Running")


# --- process figures ------------------------------------------------------------------------


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def hwm_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Sampler:
    """RSS of a process every half second (peak seen; VmHWM is the kernel's own peak)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib(self.pid))
            await asyncio.sleep(0.5)

    def start(self) -> Sampler:
        self.task = asyncio.create_task(self._run())
        return self

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


# --- API request counts ---------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metric(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            samples.append((dict(_LABEL.findall(match.group(2))), float(match.group(3))))
    return samples


def webhook_means(before: str, after: str) -> dict[str, float]:
    """Mean admission-webhook latency (ms) per webhook between two metric scrapes."""
    name = "apiserver_admission_webhook_admission_duration_seconds"

    def sums(text: str, suffix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, value in parse_metric(text, name + suffix):
            out[labels.get("name", "")] = out.get(labels.get("name", ""), 0.0) + value
        return out

    s0, s1 = sums(before, "_sum"), sums(after, "_sum")
    c0, c1 = sums(before, "_count"), sums(after, "_count")
    return {
        hook: round((s1[hook] - s0.get(hook, 0.0)) * 1000 / (c1[hook] - c0.get(hook, 0.0)), 1)
        for hook in s1
        if c1.get(hook, 0.0) > c0.get(hook, 0.0)
    }


def flow_schema_name(controller: str) -> str:
    return f"bench-{controller}"


def dispatched(text: str, controller: str) -> float:
    schema = flow_schema_name(controller)
    return sum(
        value
        for labels, value in parse_metric(text, "apiserver_flowcontrol_dispatched_requests_total")
        if labels.get("flow_schema") == schema
    )


def request_totals(text: str) -> dict[tuple[str, str, str], float]:
    totals: dict[tuple[str, str, str], float] = {}
    for labels, value in parse_metric(text, "apiserver_request_total"):
        key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("code", ""))
        totals[key] = totals.get(key, 0.0) + value
    return totals


def busiest(before: str, after: str, top: int = 5) -> list[str]:
    a, b = request_totals(before), request_totals(after)
    deltas = sorted(((v - a.get(k, 0.0), k) for k, v in b.items()), reverse=True)
    return [
        f"{verb} {resource} {code}: {int(d)}" for d, (verb, resource, code) in deltas[:top] if d
    ]


def flow_schema(controller: str, namespace: str, account: str) -> dict[str, Any]:
    """A FlowSchema matching one controller's ServiceAccount, on the priority level service
    accounts get anyway (workload-low), so its requests are counted apart and treated alike."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": flow_schema_name(controller)},
        "spec": {
            "matchingPrecedence": 500,
            "priorityLevelConfiguration": {"name": "workload-low"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"namespace": namespace, "name": account},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


# --- the two controllers ----------------------------------------------------------------------


def pool_nodes(controller: str, count: int, first_index: int, octet: int) -> list[dict[str, Any]]:
    """`count` kwok nodes only this controller's pods may use (taint + label)."""
    objects = []
    for i in range(count):
        spec = nodes.NodeSpec(
            f"bench-{controller}-{i}",
            f"bench-{controller}",
            {"cpu": "64", "memory": "256Gi", "pods": str(PODS_PER_NODE)},
            {BENCH_LABEL: controller},
        )
        node = nodes.node_manifest(spec, nodes.pod_cidr(octet, first_index + i))
        node["spec"]["taints"] = [{"key": BENCH_LABEL, "value": controller, "effect": "NoSchedule"}]
        objects.append(node)
    return objects


def toleration(controller: str) -> dict[str, str]:
    return {"key": BENCH_LABEL, "operator": "Equal", "value": controller, "effect": "NoSchedule"}


@dataclass
class Controller:
    name: str
    group: str
    version: str
    plural: str
    account_namespace: str
    account: str
    pid: int = 0

    def path(self, namespace: str) -> str:
        return f"/apis/{self.group}/{self.version}/namespaces/{namespace}/{self.plural}"

    def manifest(self, name: str) -> dict[str, Any]:
        if self.name == KOCOON:
            return {
                "apiVersion": f"{self.group}/{self.version}",
                "kind": "Sandbox",
                "metadata": {"name": name},
                "spec": {
                    "template": {
                        "image": IMAGE,
                        "resources": {"requests": dict(REQUESTS)},
                        "nodeSelector": {BENCH_LABEL: KOCOON},
                        "tolerations": [toleration(KOCOON)],
                    },
                    "runtimeClassName": "runc",
                    "hibernation": "none",
                },
            }
        return {
            "apiVersion": f"{self.group}/{self.version}",
            "kind": "Sandbox",
            "metadata": {"name": name},
            "spec": {
                "podTemplate": {
                    "spec": {
                        "runtimeClassName": "runc",
                        "automountServiceAccountToken": False,
                        "containers": [
                            {
                                "name": "sandbox",
                                "image": IMAGE,
                                "resources": {"requests": dict(REQUESTS)},
                            }
                        ],
                        "nodeSelector": {BENCH_LABEL: PEER},
                        "tolerations": [toleration(PEER)],
                    }
                }
            },
        }


KOCOON_CONTROLLER = Controller(
    KOCOON, "kocoon.io", "v1alpha1", "sandboxes", stack.NAMESPACE, "kocoon-operator"
)
PEER_CONTROLLER = Controller(
    PEER, "agents.x-k8s.io", "v1beta1", "sandboxes", PEER_NAMESPACE, PEER_ACCOUNT
)


def build_peer() -> Path:
    """The pinned agent-sandbox controller and its CRDs (setup/agent-sandbox.sh, cached)."""
    subprocess.run(["bash", str(ROOT / "setup" / "agent-sandbox.sh")], check=True)
    return binaries.find("agent-sandbox-controller")


def peer_manifests() -> Path:
    """The module's k8s/ folder as setup/agent-sandbox.sh keeps it: crds/, controller.yaml
    (namespace, account, binding), rbac.generated.yaml (the ClusterRole)."""
    return binaries.cache_dir() / "agent-sandbox-k8s"


def start_kocoon(cluster: Cluster) -> int:
    stack.install_crds(cluster)
    return stack.start_operator(cluster, webhooks=True)


def start_peer(cluster: Cluster, binary: Path, directory: Path) -> int:
    manifests = peer_manifests()
    crd = manifests / "crds" / "agents.x-k8s.io_sandboxes.yaml"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    # `kubectl wait` fails at once while the new CRD has no conditions yet: ask again.
    for _ in range(60):
        waited = cluster.kubectl(
            "wait", "--for=condition=Established", "crd/sandboxes.agents.x-k8s.io",
            "--timeout=30s", check=False,
        )  # fmt: skip
        if waited.returncode == 0:
            break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"the agent-sandbox CRD was not established: {waited.stderr}")
    # The account and RBAC of the module's own deployment, without its Deployment and Service.
    documents = [
        doc
        for file in ("controller.yaml", "rbac.generated.yaml")
        for doc in yaml.safe_load_all((manifests / file).read_text())
        if doc and doc["kind"] in {"Namespace", *stack.RBAC_KINDS}
    ]
    cluster.apply(*documents)
    kubeconfig = cluster.service_account_kubeconfig(
        PEER_NAMESPACE, PEER_ACCOUNT, directory / "agent-sandbox.kubeconfig"
    )
    probe = free_port()
    pid = cluster.start_process(
        "agent-sandbox-controller",
        [
            str(binary),
            "--leader-elect=false",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{probe}",
        ],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )
    wait_healthy(
        "agent-sandbox-controller",
        f"http://127.0.0.1:{probe}/readyz",
        pid,
        cluster.log_path("agent-sandbox-controller"),
        timeout=60,
    )
    return pid


# --- one controller's run -----------------------------------------------------------------------


@dataclass
class Figures:
    controller: str
    count: int
    create_seconds: float = 0.0
    ready_seconds: float = 0.0
    pods_running_seconds: float = 0.0
    sandboxes_ready_seconds: float = 0.0
    sandboxes_gone_seconds: float = 0.0
    delete_seconds: float = 0.0
    rss_idle_mib: float = 0.0
    rss_ready_mib: float = 0.0
    rss_after_delete_mib: float = 0.0
    rss_peak_mib: float = 0.0
    cpu_to_ready_s: float = 0.0
    cpu_delete_s: float = 0.0
    cpu_rest_per_min_s: float = 0.0
    cpu_after_delete_per_min_s: float = 0.0
    requests_to_ready: int = 0
    requests_delete: int = 0
    requests_per_object: float = 0.0
    requests_per_min_rest: float = 0.0
    requests_per_min_after_delete: float = 0.0
    requests_per_min_before: float = 0.0
    create_errors: dict[str, int] = field(default_factory=dict)
    webhook_ms_while_creating: dict[str, float] = field(default_factory=dict)
    busiest_rest: list[str] = field(default_factory=list)
    busiest_after_delete: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def create_all(
    kube: Kube, controller: Controller, namespace: str, count: int, creators: int
) -> dict[str, int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    errors: dict[str, int] = {}

    async def creator() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = controller.manifest(f"sb-{i:05d}")
            for attempt in range(20):
                status, answer = await kube.request("POST", controller.path(namespace), body)
                if status in (200, 201):
                    break
                reason = f"{status} {answer.get('reason') if isinstance(answer, dict) else ''}"
                errors[reason] = errors.get(reason, 0) + 1
                if status == 409:
                    break
                await asyncio.sleep(min(0.1 * 2**attempt, 2.0))

    await asyncio.gather(*(creator() for _ in range(creators)))
    return errors


async def rest_window(
    kube: Kube, controller: Controller, seconds: float
) -> tuple[float, float, list[str]]:
    """Requests a minute and CPU seconds a minute of the controller over `seconds`."""
    before = await kube.metrics()
    cpu0 = cpu_seconds(controller.pid)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    after = await kube.metrics()
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(controller.pid) - cpu0
    requests = dispatched(after, controller.name) - dispatched(before, controller.name)
    return requests * 60 / elapsed, cpu * 60 / elapsed, busiest(before, after)


async def warm_up(kube: Kube, cluster: Cluster, controller: Controller) -> None:
    """One Sandbox to Ready and deleted: caches synced, webhooks serving, nothing cold."""
    namespace = f"bench-{controller.name}-warmup"
    cluster.kubectl("create", "namespace", namespace, check=False)
    path = controller.path(namespace)
    sandboxes = Collection(kube, path, lambda o: condition_true(o, "Ready")).start()
    try:
        status, answer = await kube.request("POST", path, controller.manifest("warmup"))
        if status not in (200, 201):
            raise RuntimeError(f"{controller.name}: warm-up create refused: {status} {answer}")
        await sandboxes.wait(
            f"{controller.name} warm-up Ready", lambda: sandboxes.ready_count == 1, 120
        )
        await kube.request("DELETE", f"{path}/warmup")
        await sandboxes.wait(
            f"{controller.name} warm-up deleted", lambda: sandboxes.total == 0, 120
        )
    finally:
        await sandboxes.close()


async def measure(
    kube: Kube,
    cluster: Cluster,
    controller: Controller,
    count: int,
    creators: int,
    rest_seconds: float,
    settle_seconds: float,
) -> Figures:
    figures = Figures(controller.name, count)
    pid = controller.pid
    await warm_up(kube, cluster, controller)
    await asyncio.sleep(settle_seconds)
    figures.rss_idle_mib = round(rss_mib(pid), 1)
    figures.requests_per_min_before, _, _ = await rest_window(kube, controller, rest_seconds / 2)

    namespace = f"bench-{controller.name}"
    cluster.kubectl("create", "namespace", namespace)
    path = controller.path(namespace)
    sandboxes = Collection(kube, path, lambda o: condition_true(o, "Ready")).start()
    pods = Collection(kube, f"/api/v1/namespaces/{namespace}/pods", pod_running).start()
    sampler = Sampler(pid).start()
    timeout = max(600.0, count * 1.5)
    try:
        await asyncio.sleep(0.5)  # both lists made
        metrics0 = await kube.metrics()
        cpu0 = cpu_seconds(pid)
        log(f"{controller.name}: creating {count} Sandboxes with {creators} creators")
        started = time.monotonic()
        done: dict[str, float] = {}

        async def mark(name: str, coll: Collection) -> None:
            await coll.wait(
                f"{controller.name}: {name}", lambda: coll.ready_count >= count, timeout
            )
            done[name] = time.monotonic() - started

        waiting = [
            asyncio.create_task(mark("sandboxes", sandboxes)),
            asyncio.create_task(mark("pods", pods)),
        ]
        figures.create_errors = await create_all(kube, controller, namespace, count, creators)
        figures.create_seconds = round(time.monotonic() - started, 2)
        log(f"{controller.name}: created in {figures.create_seconds} s; waiting for Ready")
        await asyncio.gather(*waiting)
        figures.pods_running_seconds = round(done["pods"], 2)
        figures.sandboxes_ready_seconds = round(done["sandboxes"], 2)
        figures.ready_seconds = round(max(done.values()), 2)
        metrics1 = await kube.metrics()
        figures.cpu_to_ready_s = round(cpu_seconds(pid) - cpu0, 1)
        figures.webhook_ms_while_creating = webhook_means(metrics0, metrics1)
        figures.requests_to_ready = int(
            dispatched(metrics1, controller.name) - dispatched(metrics0, controller.name)
        )
        figures.rss_ready_mib = round(rss_mib(pid), 1)
        log(f"{controller.name}: all Ready after {figures.ready_seconds} s")

        await asyncio.sleep(settle_seconds)
        per_min, cpu, top = await rest_window(kube, controller, rest_seconds)
        figures.requests_per_min_rest = round(per_min, 1)
        figures.cpu_rest_per_min_s = round(cpu, 2)
        figures.busiest_rest = top
        log(f"{controller.name}: at rest {per_min:.0f} requests/min, {cpu:.1f} CPU s/min")

        metrics2 = await kube.metrics()
        cpu0 = cpu_seconds(pid)
        started = time.monotonic()
        status, answer = await kube.request("DELETE", path)
        if status != 200:
            raise RuntimeError(f"{controller.name}: delete of the collection refused: {answer}")
        await sandboxes.wait(
            f"{controller.name}: Sandboxes deleted", lambda: sandboxes.total == 0, timeout
        )
        figures.sandboxes_gone_seconds = round(time.monotonic() - started, 2)
        await pods.wait(f"{controller.name}: pods deleted", lambda: pods.total == 0, timeout)
        figures.delete_seconds = round(time.monotonic() - started, 2)
        figures.cpu_delete_s = round(cpu_seconds(pid) - cpu0, 1)
        metrics3 = await kube.metrics()
        figures.requests_delete = int(
            dispatched(metrics3, controller.name) - dispatched(metrics2, controller.name)
        )
        figures.requests_per_object = round(
            (figures.requests_to_ready + figures.requests_delete) / count, 2
        )
        log(f"{controller.name}: all deleted after {figures.delete_seconds} s")

        await asyncio.sleep(settle_seconds)
        per_min, cpu, top = await rest_window(kube, controller, rest_seconds)
        figures.requests_per_min_after_delete = round(per_min, 1)
        figures.cpu_after_delete_per_min_s = round(cpu, 2)
        figures.busiest_after_delete = top
        figures.rss_after_delete_mib = round(rss_mib(pid), 1)
        log(f"{controller.name}: after deletion {per_min:.0f} requests/min, {cpu:.1f} CPU s/min")
    finally:
        await sampler.close()
        await sandboxes.close()
        await pods.close()
    figures.rss_peak_mib = round(max(hwm_mib(pid), sampler.peak), 1)
    if not alive(pid):
        figures.notes.append("the controller exited during the run")
    return figures


# --- report ---------------------------------------------------------------------------------------

ROWS: list[tuple[str, str, str]] = [
    # (label, attribute, how the ratio reads)
    ("created (s)", "create_seconds", "time"),
    ("all pods Running (s)", "pods_running_seconds", "time"),
    ("all Sandboxes Ready (s)", "sandboxes_ready_seconds", "time"),
    ("to Ready, both (s)", "ready_seconds", "time"),
    ("delete: Sandboxes gone (s)", "sandboxes_gone_seconds", "time"),
    ("delete: Sandboxes and pods gone (s)", "delete_seconds", "time"),
    ("RSS idle (MiB)", "rss_idle_mib", "size"),
    ("RSS at Ready (MiB)", "rss_ready_mib", "size"),
    ("RSS peak (MiB)", "rss_peak_mib", "size"),
    ("RSS after deletion (MiB)", "rss_after_delete_mib", "size"),
    ("CPU to Ready (s)", "cpu_to_ready_s", "size"),
    ("CPU to delete (s)", "cpu_delete_s", "size"),
    ("API requests to Ready", "requests_to_ready", "size"),
    ("API requests to delete", "requests_delete", "size"),
    ("API requests per object", "requests_per_object", "size"),
    ("API requests/min, empty before", "requests_per_min_before", "size"),
    ("API requests/min at rest (N idle)", "requests_per_min_rest", "size"),
    ("API requests/min after deletion", "requests_per_min_after_delete", "size"),
    ("CPU s/min at rest", "cpu_rest_per_min_s", "size"),
    ("CPU s/min after deletion", "cpu_after_delete_per_min_s", "size"),
]


def report(results: dict[str, Figures]) -> str:
    names = list(results)
    header = "| | " + " | ".join(names) + (" | Kocoon / peer |" if len(names) == 2 else " |")
    lines = [header, "|---" * (len(names) + 1 + (len(names) == 2)) + "|"]
    for label, attribute, _ in ROWS:
        values = [getattr(results[n], attribute) for n in names]
        row = f"| {label} | " + " | ".join(str(v) for v in values)
        if len(names) == 2:
            k, p = values
            row += f" | {k / p:.2f}" if p else " | —"
        lines.append(row + " |")
    if len(names) == 2:
        k, p = results[KOCOON], results[PEER]
        if k.ready_seconds:
            lines.append(
                f"\nthroughput to Ready, Kocoon / peer: {p.ready_seconds / k.ready_seconds:.2f}x"
                f" (goal ≥ 1.0); peak memory, Kocoon / peer:"
                f" {k.rss_peak_mib / p.rss_peak_mib:.2f}x (goal ≤ 2)"
            )
    for name, figures in results.items():
        keys = ("create_errors", "webhook_ms_while_creating", "busiest_rest")
        for key in (*keys, "busiest_after_delete", "notes"):
            value = getattr(figures, key)
            if value:
                lines.append(f"{name} {key}: {value}")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    controllers = [c for c in (KOCOON_CONTROLLER, PEER_CONTROLLER) if c.name in args.only]
    peer_binary: Path | None = None
    if PEER in args.only:
        peer_binary = build_peer()
    name = f"bench-scale-{os.getpid()}"
    node_count = math.ceil(args.count * 1.1 / PODS_PER_NODE)
    results: dict[str, Figures] = {}
    stamp = time.strftime("%Y%m%dT%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    log(f"starting local cluster {name}")
    cluster = up(name, nodes_spec=(nodes.NodeSpec("kwok-system-0", "system", dict(nodes.BASE)),))
    scratch = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        pools: list[dict[str, Any]] = []
        for index, controller in enumerate(controllers):
            pools += pool_nodes(
                controller.name, node_count, 10 + index * node_count, cluster.state.network_octet
            )
        listing = {"apiVersion": "v1", "kind": "List", "items": pools}
        cluster.kubectl("create", "-f", "-", input=json.dumps(listing))
        cluster.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=120s")
        cluster.apply(*(flow_schema(c.name, c.account_namespace, c.account) for c in controllers))
        log(f"{node_count} tainted kwok nodes of {PODS_PER_NODE} pods per controller")
        async with Kube(cluster.kubeconfig, scratch) as kube:
            for controller in controllers:
                log(f"starting {controller.name}")
                if controller.name == KOCOON:
                    controller.pid = start_kocoon(cluster)
                else:
                    assert peer_binary is not None
                    controller.pid = start_peer(cluster, peer_binary, scratch)
                try:
                    results[controller.name] = await measure(
                        kube,
                        cluster,
                        controller,
                        args.count,
                        args.creators,
                        args.rest_seconds,
                        args.settle_seconds,
                    )
                finally:
                    stop(controller.pid)
                if controller.name in results:
                    print(json.dumps(results[controller.name].__dict__), flush=True)
    finally:
        # The controllers' and the cluster's logs stay beside the results.
        logs = RESULTS / f"scale-{args.count}-{stamp}-logs"
        shutil.copytree(Path(cluster.state.directory) / "logs", logs, dirs_exist_ok=True)
        if args.keep:
            log(f"cluster {name} kept: kocoon dev --name {name} down")
        else:
            down(name)
    text = report(results)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scale-{args.count}-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "command": " ".join(sys.argv),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "load_average": os.getloadavg(),
                "results": {k: v.__dict__ for k, v in results.items()},
            },
            indent=2,
        )
    )
    log(f"written {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="Sandboxes per controller")
    parser.add_argument("--creators", type=int, default=10, help="parallel creating clients")
    parser.add_argument(
        "--rest-seconds", type=float, default=60, help="length of each at-rest window"
    )
    parser.add_argument(
        "--settle-seconds", type=float, default=15, help="wait before each at-rest window"
    )
    parser.add_argument(
        "--only",
        default=f"{KOCOON},{PEER}",
        type=lambda s: [part.strip() for part in s.split(",") if part.strip()],
        help="controllers to run (kocoon,agent-sandbox)",
    )
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
