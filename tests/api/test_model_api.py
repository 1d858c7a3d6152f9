"""ModelDeployment's own rules, in the models: engines and wake strategies, model sources, the
status the router reads. The same rules on the API server are in test_api_server.py."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kocoon.api.model import ModelDeployment, ModelDeploymentStatus, ModelSource

pytestmark = pytest.mark.unit

S3 = {"endpoint": "http://s3.storage:9000", "credentialsSecretRef": {"name": "s3-creds"}}


def deployment(**spec: Any) -> dict[str, Any]:
    return {
        "kind": "ModelDeployment",
        "metadata": {"name": "m"},
        "spec": {"model": {"uri": "hf://org/name"}, "engine": {"type": "vllm"}, **spec},
    }


@pytest.mark.parametrize("engine", ["vllm", "sglang", "llamacpp"])
def test_engine_sleep_is_accepted_for_engines_with_a_sleep_mode(engine: str) -> None:
    parsed = ModelDeployment.model_validate(
        deployment(engine={"type": engine}, wakeStrategy="engineSleep")
    )
    assert parsed.spec.engine.type == engine


def test_engine_sleep_with_trtllm_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="wakeStrategy engineSleep"):
        ModelDeployment.model_validate(
            deployment(engine={"type": "trtllm"}, wakeStrategy="engineSleep")
        )


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm", "llamacpp"])
def test_checkpoint_is_accepted_for_every_engine(engine: str) -> None:
    parsed = ModelDeployment.model_validate(
        deployment(engine={"type": engine}, wakeStrategy="checkpoint")
    )
    assert parsed.spec.wake_strategy == "checkpoint"


@pytest.mark.parametrize(
    ("source", "scheme", "location"),
    [
        ({"uri": "pvc://models/llama/8b"}, "pvc", "models/llama/8b"),
        ({"uri": "pvc://models"}, "pvc", "models"),
        ({"uri": "s3://my-bucket/models/m.gguf", "s3": S3}, "s3", "my-bucket/models/m.gguf"),
        ({"uri": "s3://my-bucket/models/", "s3": S3}, "s3", "my-bucket/models/"),
        ({"uri": "oci://kocoon.local/smollm2:local", "path": "models/m.gguf"}, "oci",
         "kocoon.local/smollm2:local"),
        ({"uri": "hf://Qwen/Qwen3-0.6B", "revision": "main"}, "hf", "Qwen/Qwen3-0.6B"),
    ],
)  # fmt: skip
def test_each_scheme_parses(source: dict[str, Any], scheme: str, location: str) -> None:
    parsed = ModelSource.model_validate(source)
    assert (parsed.scheme, parsed.location) == (scheme, location)


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"uri": "gs://bucket/m"}, "uri"),  # no gs:// reader exists
        ({"uri": "http://example.com/m"}, "uri"),
        ({"uri": "pvc://Not_A_Claim/m"}, "model.uri: write pvc://"),
        ({"uri": "s3://B/m", "s3": S3}, "model.uri: write s3://"),
        ({"uri": "hf://just-a-name"}, "model.uri: write hf://"),
        ({"uri": "s3://bucket/key"}, "model.s3"),
        ({"uri": "hf://o/m", "s3": S3}, "model.s3"),
        ({"uri": "pvc://c/p", "revision": "main"}, "model.revision"),
        ({"uri": "oci://img:1", "hf": {}}, "model.hf"),
        ({"uri": "oci://img:1", "path": "../etc/passwd"}, "model.path"),
        ({"uri": "oci://img:1", "path": "/abs"}, "path"),
        ({"uri": "s3://bucket/k", "s3": {**S3, "endpoint": "ftp://x"}}, "endpoint"),
        ({"uri": "s3://bucket/k", "s3": {"endpoint": "http://x"}}, "credentialsSecretRef"),
    ],
)
def test_bad_sources_are_rejected_naming_the_field(source: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        ModelSource.model_validate(source)


def test_status_carries_what_the_router_and_metering_read() -> None:
    status = ModelDeploymentStatus.model_validate(
        {
            "phase": "Ready",
            "servedModelName": "smollm2",
            "replicas": 2,
            "readyReplicas": 1,
            "selector": "kocoon.io/model=m",
            "backends": [
                {"pod": "kocoon-model-m-0", "address": "10.0.0.5:8000", "ready": True},
                {"pod": "kocoon-model-m-1", "address": "10.0.0.6:8000", "sleeping": True},
            ],
            "usage": {"replicaSeconds": 12.5, "gpuSeconds": 0, "wakeCount": 3,
                      "accountedUntil": "2026-12-04T08:00:00Z"},
        }
    )  # fmt: skip
    wire = status.to_wire()
    assert wire["backends"][0] == {
        "pod": "kocoon-model-m-0", "address": "10.0.0.5:8000", "ready": True, "sleeping": False,
    }  # fmt: skip
    assert wire["backends"][1]["ready"] is False
    assert wire["backends"][1]["sleeping"] is True
    assert wire["usage"]["wakeCount"] == 3
    assert wire["servedModelName"] == "smollm2"
