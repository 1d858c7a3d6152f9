"""The ModelDeployment controller on the local cluster, with the operator as a real process.

kwok runs the replica pods: they become Running and Ready as soon as they are bound, with a
loopback pod IP. Where the CPU engine is installed, a real llama-server is started at that
IP on the engine port, as the pod would run it, and answers through the address the
controller put in `status.backends`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from kocoon import contract
from kocoon.devcluster import Cluster, engines
from tests.conftest import OperatorProcess
from tests.controllers.helpers import get, new_namespace, wait_for

pytestmark = pytest.mark.integration

KIND = "modeldeployment"


def deployment(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {
            "uri": "oci://kocoon.local/smollm2:local",
            "path": f"models/{engines.SMOLLM2_FILE}",
        },
        "engine": {"type": "llamacpp", "image": "kocoon.local/llamacpp:local"},
        "runtimeClassName": "runc",
        "scaling": {"minReplicas": 0, "maxReplicas": 3, "scaleDownDelay": "3s"},
    }
    base.update(spec)
    return {
        "apiVersion": contract.API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def create(cluster: Cluster, namespace: str, name: str, **spec: Any) -> None:
    manifest = deployment(name, namespace, **spec)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found = get(cluster, KIND, namespace, name)
    assert found is not None, f"{namespace}/{name} is gone"
    result: dict[str, Any] = found.get("status") or {}
    return result


def wait_status(
    cluster: Cluster,
    namespace: str,
    name: str,
    what: str,
    check: Any,
    timeout: float = 40,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        current = status(cluster, namespace, name)
        return current if check(current) else None

    found: dict[str, Any] = wait_for(f"{namespace}/{name}: {what}", probe, timeout)
    return found


def replica_pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", f"{contract.MODEL_LABEL}={name}", "-o", "json"
    ).stdout
    pods: list[dict[str, Any]] = json.loads(out)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def condition(current: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {c["type"]: c for c in current.get("conditions") or []}[kind]
    return found


def lease_name(name: str) -> str:
    return contract.activity_lease_name(contract.TARGET_KIND_MODEL, name)


def request_wake(cluster: Cluster, namespace: str, name: str) -> None:
    """What the router writes when a request arrives for a model with no ready replica."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cluster.kubectl(
        "annotate",
        "lease",
        lease_name(name),
        "-n",
        namespace,
        f"{contract.WAKE_REQUESTED_ANNOTATION}={stamp}",
        "--overwrite",
    )


def phase_is(phase: str) -> Any:
    return lambda current: current.get("phase") == phase


def test_scaled_to_zero_woken_by_the_router_then_idle_back_to_zero(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "model")
    create(cluster, namespace, "m")
    at_zero = wait_status(cluster, namespace, "m", "ScaledToZero", phase_is("ScaledToZero"))
    assert replica_pods(cluster, namespace, "m") == []
    assert at_zero["replicas"] == 0
    assert at_zero["selector"] == f"{contract.MODEL_LABEL}=m"
    assert at_zero["servedModelName"] == "m"
    assert condition(at_zero, "Ready")["reason"] == "ScaledToZero"
    # Its children: the activity Lease (owned by the deployment), the Service, the policy.
    lease = wait_for(
        "the activity Lease", lambda: get(cluster, "lease", namespace, lease_name("m"))
    )
    assert lease["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"

    request_wake(cluster, namespace, "m")
    ready = wait_status(cluster, namespace, "m", "Ready after a wake", phase_is("Ready"))
    pods = replica_pods(cluster, namespace, "m")
    assert [p["metadata"]["name"] for p in pods] == ["kocoon-model-m-0"]
    pod_ip = pods[0]["status"]["podIP"]
    assert ready["backends"] == [
        {
            "pod": "kocoon-model-m-0",
            "address": f"{pod_ip}:{contract.ENGINE_PORT}",
            "ready": True,
            "sleeping": False,
        }
    ]
    assert ready["readyReplicas"] == 1
    assert ready["usage"]["wakeCount"] == 1
    assert ready["lastWakeLatencySeconds"] > 0
    lease = get(cluster, "lease", namespace, lease_name("m"))
    assert lease is not None
    annotations = lease["metadata"].get("annotations") or {}
    assert contract.WAKE_REQUESTED_ANNOTATION not in annotations  # the wake is answered

    # No request for scaleDownDelay (3 s): back to zero, and the time it ran is metered.
    back = wait_status(cluster, namespace, "m", "idle back to zero", phase_is("ScaledToZero"))
    wait_for("the replica to go", lambda: replica_pods(cluster, namespace, "m") == [])
    assert back["backends"] == []
    assert back["usage"]["replicaSeconds"] >= 3
    assert back["usage"]["gpuSeconds"] == 0
    reasons = [e["reason"] for e in events(cluster, namespace, "m")]
    assert "ReplicasWaking" in reasons
    assert "ScaledToZero" in reasons


def events(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.name={name},involvedObject.kind=ModelDeployment"
    out = cluster.kubectl(
        "get", "events", "-n", namespace, "-o", "json", f"--field-selector={selector}"
    ).stdout
    found: list[dict[str, Any]] = json.loads(out)["items"]
    return sorted(found, key=lambda e: e["metadata"]["creationTimestamp"])


def test_kubectl_scale_is_obeyed_and_a_deleted_replica_comes_back(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "scale")
    create(cluster, namespace, "s")
    wait_status(cluster, namespace, "s", "ScaledToZero", phase_is("ScaledToZero"))
    cluster.kubectl("scale", KIND, "s", "-n", namespace, "--replicas=2")
    scaled = wait_status(
        cluster,
        namespace,
        "s",
        "2 ready replicas",
        lambda s: s.get("readyReplicas") == 2 and s.get("phase") == "Ready",
    )
    assert scaled["replicas"] == 2
    names = sorted(p["metadata"]["name"] for p in replica_pods(cluster, namespace, "s"))
    assert names == ["kocoon-model-s-0", "kocoon-model-s-1"]
    # The scale subresource reads what the controller writes.
    scale = json.loads(cluster.kubectl("get", "--raw", _scale_path(namespace, "s")).stdout)
    assert scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == f"{contract.MODEL_LABEL}=s"

    victim = get(cluster, "pod", namespace, "kocoon-model-s-1")
    assert victim is not None
    cluster.kubectl("delete", "pod", "kocoon-model-s-1", "-n", namespace, "--wait=false")

    def replaced() -> dict[str, Any] | None:
        pod = get(cluster, "pod", namespace, "kocoon-model-s-1")
        if pod and pod["metadata"]["uid"] != victim["metadata"]["uid"]:
            return pod
        return None

    wait_for("the deleted replica to come back", replaced)
    wait_status(cluster, namespace, "s", "2 ready again", lambda s: s.get("readyReplicas") == 2)

    # Demand does not override spec.replicas: scaled to 1, one replica stays.
    cluster.kubectl("scale", KIND, "s", "-n", namespace, "--replicas=1")
    wait_for("one replica", lambda: len(replica_pods(cluster, namespace, "s")) == 1)
    time.sleep(4)  # longer than scaleDownDelay: spec.replicas holds it at one
    assert [p["metadata"]["name"] for p in replica_pods(cluster, namespace, "s")] == [
        "kocoon-model-s-0"
    ]
    counted = status(cluster, namespace, "s")
    assert counted["usage"]["replicaSeconds"] > 0
    assert condition(counted, "Ready")["status"] == "True"


def _scale_path(namespace: str, name: str) -> str:
    return f"/apis/{contract.API_VERSION}/namespaces/{namespace}/modeldeployments/{name}/scale"


def test_a_mig_profile_no_node_offers_is_a_condition_naming_it(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "mig")
    create(
        cluster,
        namespace,
        "g",
        replicas=1,
        gpu={"mode": "mig", "profile": "2g.20gb"},
        engine={"type": "vllm"},
    )

    def unschedulable(current: dict[str, Any]) -> bool:
        found = {c["type"]: c for c in current.get("conditions") or []}.get("PodScheduled")
        return bool(found and found["status"] == "False")

    stuck = wait_status(cluster, namespace, "g", "PodScheduled=False", unschedulable, 60)
    scheduled = condition(stuck, "PodScheduled")
    assert scheduled["reason"] == "NoNodeOffersSlice"
    assert "2g.20gb" in scheduled["message"]
    assert "nvidia.com/mig-2g.20gb" in scheduled["message"]  # the scheduler's own words
    assert stuck["phase"] == "Pending"
    assert condition(stuck, "Ready")["status"] == "False"
    assert "NoNodeOffersSlice" in [e["reason"] for e in events(cluster, namespace, "g")]


@pytest.fixture
def engine_log(tmp_path: Path) -> Path:
    if not engines.installed():
        pytest.skip(f"the CPU engine is not installed: {engines.SETUP_HINT}")
    return tmp_path / "llama-server.log"


def test_a_woken_replica_serves_a_real_engine_at_its_backend_address(
    cluster: Cluster, operator: OperatorProcess, engine_log: Path
) -> None:
    namespace = new_namespace(cluster, "engine")
    create(cluster, namespace, "e", route={"servedModelName": "smollm2"})
    wait_status(cluster, namespace, "e", "ScaledToZero", phase_is("ScaledToZero"))
    request_wake(cluster, namespace, "e")
    ready = wait_status(cluster, namespace, "e", "Ready", phase_is("Ready"))
    host, port = ready["backends"][0]["address"].rsplit(":", 1)
    assert int(port) == contract.ENGINE_PORT
    # Where kwok says the pod runs, run the engine the pod would run.
    with engine_at(engine_log, host, int(port), ready["servedModelName"]) as base_url:
        code, models = engines.http_json(f"{base_url}/v1/models")
        assert code == 200
        assert [m["id"] for m in models["data"]] == ["smollm2"]


@contextlib.contextmanager
def engine_at(
    log: Path, host: str, port: int, served_name: str, sleep_idle_seconds: int | None = None
) -> Iterator[str]:
    """llama-server with SmolLM2 bound at `host:port` (a kwok pod's loopback address)."""
    argv = [
        str(engines.llama_server()),
        *engines.server_args(
            engines.smollm2_model(),
            served_name=served_name,
            host=host,
            port=port,
            sleep_idle_seconds=sleep_idle_seconds,
        ),
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    base_url = f"http://{host}:{port}"
    try:
        engines.wait_healthy(base_url, timeout=60, pid=process.pid)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_an_evicted_replica_is_replaced_and_counted_and_a_spec_change_rolls_replicas(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "evict")
    create(cluster, namespace, "v", replicas=1, cache={"size": "1Gi"})
    wait_status(cluster, namespace, "v", "Ready", phase_is("Ready"))
    cache = wait_for(
        "the cache claim", lambda: get(cluster, "pvc", namespace, "kocoon-model-v-cache")
    )
    assert cache["metadata"]["ownerReferences"][0]["name"] == "v"
    first = get(cluster, "pod", namespace, "kocoon-model-v-0")
    assert first is not None

    # What the kubelet reports for an evicted pod.
    cluster.kubectl(
        "patch",
        "pod",
        "kocoon-model-v-0",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(
            {
                "status": {
                    "phase": "Failed",
                    "reason": "Evicted",
                    "message": "The node was low on resource: memory.",
                }
            }
        ),
    )

    def replaced(old: dict[str, Any]) -> Any:
        def probe() -> dict[str, Any] | None:
            pod = get(cluster, "pod", namespace, "kocoon-model-v-0")
            if pod and pod["metadata"]["uid"] != old["metadata"]["uid"]:
                return pod
            return None

        return probe

    second = wait_for("the evicted replica to be replaced", replaced(first))
    counted = wait_status(cluster, namespace, "v", "Ready again", phase_is("Ready"))
    failed = [e for e in events(cluster, namespace, "v") if e["reason"] == "ReplicaFailed"]
    assert failed, "no ReplicaFailed event"
    assert "Evicted" in failed[0]["message"]
    assert "low on resource" in failed[0]["message"]
    assert counted.get("restarts") is None  # all ready again: the count starts over

    # A new engine argument is a new pod template: the replica is replaced by one built from
    # it; the cache left the spec, so its claim goes.
    cluster.kubectl(
        "patch",
        KIND,
        "v",
        "-n",
        namespace,
        "--type=json",
        "-p",
        json.dumps(
            [
                {"op": "add", "path": "/spec/engine/args", "value": ["--ctx-size=1024"]},
                {"op": "remove", "path": "/spec/cache"},
            ]
        ),
    )
    third = wait_for("the replica to be rebuilt", replaced(second))
    assert "--ctx-size=1024" in third["spec"]["containers"][0]["args"]

    def claim_gone() -> bool:
        claim = get(cluster, "pvc", namespace, "kocoon-model-v-cache")
        return claim is None or bool(claim["metadata"].get("deletionTimestamp"))

    wait_for("the cache claim to be pruned", claim_gone)
    wait_status(cluster, namespace, "v", "Ready on the new template", phase_is("Ready"))


def test_engine_sleep_keeps_a_llama_server_replica_and_reports_it_asleep(
    cluster: Cluster, operator: OperatorProcess, engine_log: Path
) -> None:
    namespace = new_namespace(cluster, "sleep")
    create(
        cluster,
        namespace,
        "z",
        wakeStrategy="engineSleep",
        scaling={"minReplicas": 0, "maxReplicas": 1, "scaleDownDelay": "2s"},
    )
    # engineSleep never scales to zero: the replica stays and its engine sleeps instead.
    ready = wait_status(cluster, namespace, "z", "Ready", phase_is("Ready"))
    pod = get(cluster, "pod", namespace, "kocoon-model-z-0")
    assert pod is not None
    args = pod["spec"]["containers"][0]["args"]
    idle = int(args[args.index("--sleep-idle-seconds") + 1])
    assert idle == 2  # the engine sleeps after scaleDownDelay without requests
    host, port = ready["backends"][0]["address"].rsplit(":", 1)
    with engine_at(engine_log, host, int(port), "z", sleep_idle_seconds=idle) as base_url:

        def asleep_reported(current: dict[str, Any]) -> bool:
            found = {c["type"]: c for c in current.get("conditions") or []}
            message = str(found.get("WakeStrategyAvailable", {}).get("message", ""))
            return message.endswith("now 1 of 1 asleep")

        slept = wait_status(cluster, namespace, "z", "the engine reported asleep", asleep_reported)
        _, props = engines.http_json(f"{base_url}/props")
        assert props["is_sleeping"] is True
        # It still takes requests: llama-server reloads the model by itself.
        assert slept["backends"][0]["sleeping"] is False
        assert slept["phase"] == "Ready"
        assert len(replica_pods(cluster, namespace, "z")) == 1
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="z",
            messages=[
                {"role": "user", "content": "What is the capital of France? Answer in one word."}
            ],
            max_tokens=16,
            temperature=0,
            seed=1,
        )
        assert "Paris" in (reply.choices[0].message.content or "")


def test_a_checkpoint_that_cannot_be_taken_scales_to_zero_anyway_and_says_why(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    """No node agent serves the simulated nodes: the checkpoint before scaling to zero fails,
    the condition and an Event say why, the replica goes anyway, and deletion is not held up."""
    namespace = new_namespace(cluster, "ckpt")
    create(cluster, namespace, "c", wakeStrategy="checkpoint", replicas=1)
    ready = wait_status(cluster, namespace, "c", "Ready", phase_is("Ready"))
    assert condition(ready, "WakeStrategyAvailable")["status"] == "True"
    found = get(cluster, KIND, namespace, "c")
    assert found is not None
    assert "kocoon.io/model-cleanup" in found["metadata"]["finalizers"]

    cluster.kubectl("scale", KIND, "c", "-n", namespace, "--replicas=0")
    at_zero = wait_status(cluster, namespace, "c", "ScaledToZero", phase_is("ScaledToZero"))
    wait_for("the replica to go", lambda: replica_pods(cluster, namespace, "c") == [])
    available = condition(at_zero, "CheckpointAvailable")
    assert available["status"] == "False"
    assert available["reason"] == "CheckpointFailed"
    assert "no Kocoon agent serves node" in available["message"]
    assert "checkpoint" not in at_zero
    assert "CheckpointFailed" in [e["reason"] for e in events(cluster, namespace, "c")]

    cluster.kubectl("delete", KIND, "c", "-n", namespace, "--timeout=30s")
    assert get(cluster, KIND, namespace, "c") is None


def test_a_checkpoint_wake_for_a_gpu_replica_says_cuda_checkpoint_is_missing(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "cuda")
    create(
        cluster,
        namespace,
        "g",
        wakeStrategy="checkpoint",
        engine={"type": "vllm"},
        gpu={"mode": "wholeGPU"},
    )
    current = wait_status(cluster, namespace, "g", "ScaledToZero", phase_is("ScaledToZero"))
    wake = condition(current, "WakeStrategyAvailable")
    assert (wake["status"], wake["reason"]) == ("False", "CudaCheckpointMissing")
    assert "coldStart" in wake["message"]


class DocumentedVllmSleep:
    """vLLM's sleep endpoints as its documentation states them (docs.vllm.ai, sleep mode):
    `POST /sleep?level=1`, `POST /wake_up`, `GET /is_sleeping` → `{"is_sleeping": bool}`, plus
    `GET /health`. vLLM needs a GPU and does not run here: this serves the protocol, at the
    replica's address, so the operator's client is tested against what the docs promise."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sleeping = False
        self.calls: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/is_sleeping", self._is_sleeping)
        app.router.add_post("/sleep", self._sleep)
        app.router.add_post("/wake_up", self._wake_up)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, self.port)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(text="")

    async def _is_sleeping(self, _: web.Request) -> web.Response:
        return web.json_response({"is_sleeping": self.sleeping})

    async def _sleep(self, request: web.Request) -> web.Response:
        self.calls.append(f"POST /sleep?level={request.query.get('level')}")
        self.sleeping = True
        return web.Response(text="")

    async def _wake_up(self, _: web.Request) -> web.Response:
        self.calls.append("POST /wake_up")
        self.sleeping = False
        return web.Response(text="")

    def __enter__(self) -> DocumentedVllmSleep:
        self._thread.start()
        assert self._started.wait(10), "the protocol server did not start"
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def test_engine_sleep_for_vllm_sends_the_documented_sleep_and_wake_requests(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "vsleep")
    create(
        cluster,
        namespace,
        "v",
        engine={"type": "vllm"},
        wakeStrategy="engineSleep",
        scaling={"minReplicas": 0, "maxReplicas": 1, "scaleDownDelay": "2s"},
    )
    ready = wait_status(cluster, namespace, "v", "Ready", phase_is("Ready"))
    host, port = ready["backends"][0]["address"].rsplit(":", 1)
    with DocumentedVllmSleep(host, int(port)) as engine:
        asleep = wait_status(
            cluster,
            namespace,
            "v",
            "the replica asleep",
            lambda s: bool(s.get("backends")) and s["backends"][0]["sleeping"] is True,
        )
        assert engine.calls == ["POST /sleep?level=1"]
        assert asleep["phase"] == "Ready"
        assert len(replica_pods(cluster, namespace, "v")) == 1  # it sleeps; it is not removed
        wake = condition(asleep, "WakeStrategyAvailable")
        assert wake["status"] == "True"

        request_wake(cluster, namespace, "v")  # what the router writes, holding a request
        awake = wait_status(
            cluster,
            namespace,
            "v",
            "the replica awake",
            lambda s: bool(s.get("backends")) and s["backends"][0]["sleeping"] is False,
        )
        assert engine.calls == ["POST /sleep?level=1", "POST /wake_up"]
        assert awake["backends"][0]["ready"] is True


def test_a_source_the_engine_cannot_load_is_failed_naming_the_field_until_fixed(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "src")
    # llama-server's image has no huggingface_hub to download an hf:// source with.
    create(
        cluster,
        namespace,
        "h",
        model={"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        engine={"type": "llamacpp"},
    )
    failed = wait_status(cluster, namespace, "h", "Failed", phase_is("Failed"))
    source = condition(failed, "ModelSourceReady")
    assert (source["status"], source["reason"]) == ("False", "ModelSourceInvalid")
    assert source["message"].startswith("model.uri:")
    assert replica_pods(cluster, namespace, "h") == []

    # The fix the message names: an engine image of the user's that has huggingface_hub.
    cluster.kubectl(
        "patch", KIND, "h", "-n", namespace, "--type=merge", "-p",
        json.dumps({"spec": {"engine": {"image": "llama-server-with-hf:1"}}}),
    )  # fmt: skip
    fixed = wait_status(cluster, namespace, "h", "ScaledToZero", phase_is("ScaledToZero"))
    assert condition(fixed, "ModelSourceReady")["status"] == "True"


GPU_SLICES = {
    # name: (the replica's gpu, the simulated node that offers that slice)
    "whole": ({"mode": "wholeGPU", "count": 2}, "kwok-gpu-whole-0"),
    "mig": ({"mode": "mig", "profile": "1g.10gb"}, "kwok-gpu-mig-0"),
    "shared": ({"mode": "timeSliced"}, "kwok-gpu-shared-0"),
    "dra": ({"mode": "dra", "deviceClassName": "gpu.nvidia.com"}, "kwok-gpu-dra-0"),
}


def test_replicas_land_on_the_node_offering_their_gpu_slice_and_gpu_time_is_metered(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "slices")
    for name, (gpu, _) in GPU_SLICES.items():
        create(cluster, namespace, name, replicas=1, gpu=gpu, engine={"type": "vllm"})
    for name, (_, node) in GPU_SLICES.items():
        wait_status(cluster, namespace, name, "Ready", phase_is("Ready"), 60)
        pods = replica_pods(cluster, namespace, name)
        assert [p["spec"]["nodeName"] for p in pods] == [node], name
    for name in GPU_SLICES:
        cluster.kubectl("scale", KIND, name, "-n", namespace, "--replicas=0")
    for name, (gpu, _) in GPU_SLICES.items():
        at_zero = wait_status(cluster, namespace, name, "at zero", lambda s: s["replicas"] == 0)
        usage = at_zero["usage"]
        # GPU time is the replica time times the slice's device count.
        assert usage["replicaSeconds"] > 0, name
        assert usage["gpuSeconds"] == pytest.approx(
            usage["replicaSeconds"] * gpu.get("count", 1), rel=0.01
        ), name
