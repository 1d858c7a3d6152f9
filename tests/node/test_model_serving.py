"""A ModelDeployment on the real node, from zero: the `openai` SDK streams a chat completion
through the router while the model wakes (the router holds the request, the operator starts a
replica, llama-server loads SmolLM2 from the model image), it scales to zero when idle, and the
next request wakes it again. The operator and the router run as they do in `make dev`; the test
only sends requests and watches.

The replica pods reach the real node (labelled and tainted so only chosen pods land there)
through a RuntimeClass whose `scheduling` carries that node selector and toleration: the
ModelDeployment names it in `runtimeClassName`, like any cluster's dedicated node pool.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from sandboxkit import stored_checkpoints, wait_for
from tests.conftest import OperatorProcess, install_crds, start_operator, stop_operator

from kocoon import contract
from kocoon.devcluster import Cluster, engines, images, realnode, stack

pytestmark = pytest.mark.node

NAME = "smollm2"
RUNTIME_CLASS = "kocoon-real-node-runc"
SCALE_DOWN_SECONDS = 5
PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@dataclass
class ModelStack:
    cluster: Cluster
    router: str
    namespace: str
    api_key: str
    operator: OperatorProcess

    def kubectl(self, *args: str) -> str:
        return self.cluster.kubectl(*args, "-n", self.namespace).stdout

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            self.kubectl("get", "modeldeployment", NAME, "-o", "json")
        )
        return found.get("status") or {}

    def pods(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(
            self.kubectl("get", "pods", "-l", f"{contract.MODEL_LABEL}={NAME}", "-o", "json")
        )["items"]
        return found

    def replicas(self) -> list[dict[str, Any]]:
        return [p for p in self.pods() if not p["metadata"].get("deletionTimestamp")]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.router}{contract.OPENAI_BASE_PATH}",
            api_key=self.api_key,
            timeout=180,
            max_retries=0,
        )


def runtime_class() -> dict[str, Any]:
    return {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": RUNTIME_CLASS},
        "handler": "runc",
        "scheduling": {
            "nodeSelector": {realnode.REAL_NODE_LABEL: "true"},
            "tolerations": [{**realnode.REAL_NODE_TAINT, "operator": "Equal"}],
        },
    }


def model_deployment(namespace: str, wake_strategy: str = "coldStart") -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {
                "uri": f"oci://{images.reference(images.SMOLLM2)}",
                "path": f"models/{engines.SMOLLM2_FILE}",
            },
            "engine": {"type": "llamacpp", "image": images.reference(images.LLAMACPP)},
            "runtimeClassName": RUNTIME_CLASS,
            "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": 1,
                "targetConcurrency": 2,
                "scaleDownDelay": f"{SCALE_DOWN_SECONDS}s",
            },
            "wakeStrategy": wake_strategy,
            "route": {"servedModelName": NAME},
        },
    }


def api_key_secret(namespace: str, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "openai-key",
            "namespace": namespace,
            "labels": {contract.API_KEY_SECRET_LABEL: contract.SECRET_LABEL_VALUE},
        },
        "data": {contract.API_KEY_KEY: base64.b64encode(key.encode()).decode()},
    }


@pytest.fixture
def model_stack(real_node: Cluster, tmp_path: Path) -> Iterator[ModelStack]:
    yield from _model_stack(real_node, tmp_path, with_agent=False)


@pytest.fixture
def checkpoint_stack(real_node: Cluster, tmp_path: Path) -> Iterator[ModelStack]:
    yield from _model_stack(real_node, tmp_path, with_agent=True)


def _model_stack(real_node: Cluster, tmp_path: Path, *, with_agent: bool) -> Iterator[ModelStack]:
    if not engines.installed():
        pytest.skip(f"the CPU engine is not installed: {engines.SETUP_HINT}")
    install_crds(real_node)
    # The RuntimeClass that reaches the real node runs runc: its pods can be checkpointed.
    classes = json.dumps(["runc", RUNTIME_CLASS])
    env = {
        "KOCOON_RUNTIME_CLASSES": json.dumps(
            ["kata", "kata-qemu-nvidia-gpu", "runc", RUNTIME_CLASS]
        ),
        "KOCOON_MEMORY_CHECKPOINT_RUNTIME_CLASSES": classes,
    }
    if with_agent:
        env.update(stack.start_agent(real_node))
        if realnode.criu_needs_root():
            # CRIU here checkpoints only root's processes: the engine runs as the image's
            # user (root), which pod hardening would refuse.
            env["KOCOON_POD_HARDENING"] = "false"
    operator = start_operator(real_node, tmp_path, env=env)
    _, router = stack.start_router(real_node)
    namespace = f"node-model-{time.monotonic_ns() % 10**6}"
    real_node.kubectl("create", "namespace", namespace)
    key = secrets.token_urlsafe(24)
    real_node.apply(runtime_class(), api_key_secret(namespace, key))
    running = ModelStack(real_node, router, namespace, key, operator)
    try:
        yield running
    finally:
        real_node.kubectl(
            "delete", "namespace", namespace, "--wait=true", "--timeout=60s", check=False
        )
        stop_operator(operator)
        stack.stop_process(real_node, "kocoon-router")
        if with_agent:
            stack.stop_process(real_node, "kocoon-agent")
        errors = [line for line in operator.output().splitlines() if '"level": "error"' in line]
        assert not errors, "\n".join(errors[:10])


def _stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def pod_split(pod: dict[str, Any]) -> str:
    """Where a replica's start went, from the API's own timestamps (1 s resolution)."""
    created = _stamp(pod["metadata"]["creationTimestamp"])
    conditions = {c["type"]: c for c in pod["status"]["conditions"]}
    state = pod["status"]["containerStatuses"][0]["state"]
    started = _stamp(state["running"]["startedAt"])
    ready = _stamp(conditions["Ready"]["lastTransitionTime"])
    return (
        f"pod created → engine started {(started - created).total_seconds():.0f} s,"
        f" engine started → Ready {(ready - started).total_seconds():.0f} s"
    )


def stream_answer(client: openai.OpenAI) -> tuple[str, float, float]:
    """A streamed chat completion: (text, seconds to the first token, seconds in all)."""
    began = time.monotonic()
    first: float | None = None
    pieces: list[str] = []
    stream = client.chat.completions.create(
        model=NAME, messages=PROMPT, stream=True, max_tokens=16, temperature=0, seed=1
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.monotonic() - began
            pieces.append(chunk.choices[0].delta.content)
    assert first is not None, "no token arrived"
    return "".join(pieces), first, time.monotonic() - began


def test_a_model_answers_from_zero_scales_to_zero_when_idle_and_wakes_again(
    model_stack: ModelStack,
) -> None:
    running = model_stack
    running.cluster.apply(model_deployment(running.namespace))
    wait_for("ScaledToZero", lambda: running.status().get("phase") == "ScaledToZero")
    assert running.replicas() == []
    client = running.client()
    assert [m.id for m in client.models.list().data] == [NAME]

    timings: list[str] = []
    for wake in (1, 2):
        text, first_token, total = stream_answer(client)
        assert "Paris" in text, text
        status = wait_for(
            "Ready after the wake", lambda: (s := running.status()).get("phase") == "Ready" and s
        )
        pods = running.replicas()
        assert [p["spec"]["nodeName"] for p in pods] == [realnode.NODE_NAME]
        assert status["backends"][0]["address"] == (
            f"{pods[0]['status']['podIP']}:{contract.ENGINE_PORT}"
        )
        assert status["usage"]["wakeCount"] == wake
        latency = status["lastWakeLatencySeconds"]
        timings.append(
            f"wake {wake}: request → first token {first_token:.2f} s, whole answer {total:.2f} s,"
            f" Waking → Ready {latency:.2f} s ({pod_split(pods[0])})"
        )
        # A second request goes straight to the warm replica.
        _, warm_first, _ = stream_answer(client)
        timings.append(f"wake {wake}: warm request → first token {warm_first:.2f} s")

        began = time.monotonic()
        wait_for(
            "ScaledToZero when idle",
            lambda: running.status().get("phase") == "ScaledToZero",
            timeout=SCALE_DOWN_SECONDS + 60,
        )
        idle = time.monotonic() - began
        # Gone for good, not only deleting: the next wake's pod takes the same name.
        wait_for("the replica to go", lambda: running.pods() == [] or None, timeout=60)
        timings.append(
            f"wake {wake}: last request → ScaledToZero {idle:.1f} s (scaleDownDelay"
            f" {SCALE_DOWN_SECONDS} s), → pod gone {time.monotonic() - began:.1f} s"
        )
    final = running.status()
    assert final["usage"]["replicaSeconds"] > 0
    print("\n".join(timings))


def test_a_checkpoint_wake_restores_the_loaded_engine_instead_of_starting_it(
    checkpoint_stack: ModelStack,
) -> None:
    """wakeStrategy checkpoint: the first wake is cold (nothing to restore yet); scaling to zero
    checkpoints the ready replica through the node agent; the next wake restores it into a held
    pod, and the restored engine answers."""
    running = checkpoint_stack
    running.cluster.apply(model_deployment(running.namespace, "checkpoint"))
    wait_for("ScaledToZero", lambda: running.status().get("phase") == "ScaledToZero")
    client = running.client()
    timings: list[str] = []

    text, first_token, _ = stream_answer(client)
    assert "Paris" in text, text
    timings.append(f"cold wake: request → first token {first_token:.2f} s")
    wait_for("ScaledToZero", lambda: running.status().get("phase") == "ScaledToZero", 90)
    wait_for("the replica to go", lambda: running.pods() == [] or None, timeout=60)
    status = running.status()
    conditions = {c["type"]: c for c in status["conditions"]}
    assert "checkpoint" in status, json.dumps(conditions, indent=1)
    checkpoint = status["checkpoint"]
    assert checkpoint["driver"] == "containerd"
    assert checkpoint["node"] == realnode.NODE_NAME
    timings.append(f"checkpoint: {conditions['CheckpointAvailable']['message']}")

    for wake in (1, 2):
        text, first_token, _ = stream_answer(client)
        assert "Paris" in text, text
        ready = wait_for(
            "Ready after the restore",
            lambda: (s := running.status()).get("phase") == "Ready" and s,
        )
        pod = running.replicas()[0]
        annotations = pod["metadata"]["annotations"]
        assert annotations["kocoon.io/restored-checkpoint"] == checkpoint["id"]
        timings.append(
            f"checkpoint wake {wake}: request → first token {first_token:.2f} s,"
            f" Waking → Ready {ready['lastWakeLatencySeconds']:.2f} s"
        )
        wait_for("ScaledToZero", lambda: running.status().get("phase") == "ScaledToZero", 90)
        wait_for("the replica to go", lambda: running.pods() == [] or None, timeout=60)
        # A checkpoint is restored once; the restored replica was checkpointed again.
        again = running.status()["checkpoint"]
        assert again["id"] != checkpoint["id"]
        checkpoint = again
    print("\n".join(timings))

    # Deleting the deployment releases its checkpoint and the agent's key for it.
    state = Path(running.cluster.state.directory) / "agent" / "state"
    assert stored_checkpoints(state) == [checkpoint["id"]]
    running.kubectl("delete", "modeldeployment", NAME, "--timeout=60s")
    assert stored_checkpoints(state) == []
    keys = state / "keys"
    assert not [k for k in keys.iterdir() if k.name.startswith(running.namespace)], list(
        keys.iterdir()
    )
