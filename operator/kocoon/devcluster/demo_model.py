"""`make dev`, the model part: a ModelDeployment served on this machine's real node through
the router's OpenAI endpoint, from zero, to zero when idle, and woken again.

llama.cpp's llama-server runs SmolLM2-135M (both built by `setup/llamacpp.sh`, imported into
the node's containerd as images); the `openai` SDK streams a chat completion through the
router, which holds it while a replica starts. An API key Secret is made for the dev cluster
and kept in its directory, so `eval "$(kocoon dev env)"` gives the SDK and curl what they need.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

import openai
import yaml
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from kocoon import contract
from kocoon.api.common import Duration
from kocoon.devcluster import engines
from kocoon.devcluster.cluster import DEV_API_KEY_FILE, Cluster
from kocoon.devcluster.console import step, wait

# The model is the example's, so the example does what its comments say on this cluster.
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "cpu-model-scale-to-zero.yaml"
NAME = "smollm2"
API_KEY_SECRET = "dev-api-key"
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France? Answer in one word."}
]


def model_deployment(namespace: str) -> dict[str, Any]:
    """The example `examples/cpu-model-scale-to-zero.yaml`, as it is, in `namespace`."""
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["namespace"] = namespace
    return manifest


def scale_down_delay_seconds(manifest: dict[str, Any]) -> float:
    return Duration.parse(manifest["spec"]["scaling"]["scaleDownDelay"]).total_seconds()


def api_key_secret(namespace: str, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": API_KEY_SECRET,
            "namespace": namespace,
            "labels": {contract.API_KEY_SECRET_LABEL: contract.SECRET_LABEL_VALUE},
        },
        "data": {contract.API_KEY_KEY: base64.b64encode(key.encode()).decode()},
    }


def dev_api_key(handle: Cluster) -> str:
    """The dev cluster's API key: made once, kept in the cluster's directory."""
    path = Path(handle.state.directory) / DEV_API_KEY_FILE
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def stream(client: openai.OpenAI) -> tuple[str, float, float]:
    """One streamed chat completion, printed as it arrives: (text, first token s, total s)."""
    began = time.monotonic()
    first: float | None = None
    pieces: list[str] = []
    print("    answer: ", end="", flush=True)
    chunks = client.chat.completions.create(
        model=NAME, messages=PROMPT, stream=True, max_tokens=16, temperature=0, seed=1
    )
    for chunk in chunks:
        assert isinstance(chunk, ChatCompletionChunk)
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            first = first if first is not None else time.monotonic() - began
            pieces.append(text)
            print(text, end="", flush=True)
    print(flush=True)
    return "".join(pieces), first or 0.0, time.monotonic() - began


def run(handle: Cluster, router: str, namespace: str) -> bool:
    """The model's life; True when both answers (from zero, and after scaling to zero) came."""
    if not engines.installed():
        print(f"    skipped: the CPU engine is not installed ({engines.SETUP_HINT})")
        return False
    model = model_deployment(namespace)
    spec = model["spec"]
    delay = scale_down_delay_seconds(model)
    step(
        f"creating ModelDeployment {namespace}/{NAME} from {EXAMPLE.name}: llama.cpp on CPU,"
        f" SmolLM2-135M, minReplicas {spec['scaling']['minReplicas']}, scaleDownDelay {delay:.0f}s,"
        f" wakeStrategy {spec['wakeStrategy']}"
    )
    key = dev_api_key(handle)
    handle.apply(api_key_secret(namespace, key))
    manifest = json.dumps(model)
    refused: list[str] = []

    def accepted() -> bool:
        out = handle.kubectl("apply", "-f", "-", input=manifest, check=False)
        refused[:] = [out.stderr.strip()]
        return out.returncode == 0

    try:  # the admission webhook may still be learning the cluster's RuntimeClasses
        wait("the ModelDeployment to be accepted", accepted, timeout=30)
    except TimeoutError:
        print(f"    refused: {refused[0]}")
        raise

    def status() -> dict[str, Any]:
        out = handle.kubectl("get", "modeldeployment", NAME, "-n", namespace, "-o", "json")
        found: dict[str, Any] = json.loads(out.stdout).get("status") or {}
        return found

    wait("ScaledToZero", lambda: status().get("phase") == "ScaledToZero")
    print("    ScaledToZero: no replica runs")
    base_url = f"{router}{contract.OPENAI_BASE_PATH}"
    client = openai.OpenAI(base_url=base_url, api_key=key, timeout=180, max_retries=0)
    print(f"    models at {base_url}: {[m.id for m in client.models.list().data]}")

    answered = 0
    for attempt in ("from zero", "after scaling to zero"):
        step(f"a streamed chat completion through the router, {attempt} (held while it wakes)")
        text, first, total = stream(client)
        answered += "Paris" in text
        now = status()
        print(
            f"    first token after {first:.2f} s, whole answer {total:.2f} s;"
            f" phase {now.get('phase')}, Waking → Ready {now.get('lastWakeLatencySeconds')} s"
        )
        began = time.monotonic()
        wait(
            "ScaledToZero when idle",
            lambda: status().get("phase") == "ScaledToZero",
            timeout=delay + 90,
        )
        checkpoint = status().get("checkpoint") or {}
        kept = f"; checkpoint {checkpoint['id']} kept" if checkpoint.get("id") else ""
        print(f"    idle → ScaledToZero after {time.monotonic() - began:.1f} s{kept}")
    print(f"    usage: {json.dumps(status().get('usage', {}))}")
    print(
        '    try it: eval "$(.venv/bin/kocoon dev env)"; curl -s "$OPENAI_BASE_URL/models"'
        ' -H "Authorization: Bearer $OPENAI_API_KEY"'
    )
    return answered == 2
