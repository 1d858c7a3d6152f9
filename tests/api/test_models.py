"""The kinds: examples load, every field is documented, unknown fields and bad combinations fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from kocoon.api.model import ModelDeployment
from kocoon.api.sandbox import Sandbox
from kocoon.api.session import AgentSession

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KINDS: dict[str, type[BaseModel]] = {
    "Sandbox": Sandbox,
    "AgentSession": AgentSession,
    "ModelDeployment": ModelDeployment,
}


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path.name, document))
    return documents


def test_examples_cover_every_kind() -> None:
    kinds = {document["kind"] for _, document in example_documents()}
    assert kinds == set(KINDS)


@pytest.mark.parametrize(("name", "document"), example_documents())
def test_example_loads_and_round_trips(name: str, document: dict[str, Any]) -> None:
    model = KINDS[document["kind"]].model_validate(document)
    wire = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert type(model).model_validate(wire) == model
    assert wire["metadata"]["name"] == document["metadata"]["name"]


def _undocumented(model: type[BaseModel], seen: set[type[BaseModel]]) -> list[str]:
    if model in seen:
        return []
    seen.add(model)
    missing = []
    for name, info in model.model_fields.items():
        if not info.description:
            missing.append(f"{model.__name__}.{name}")
        for arg in _model_types(info.annotation):
            missing += _undocumented(arg, seen)
    return missing


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in get_args(annotation) for found in _model_types(arg)]


def test_every_field_is_documented() -> None:
    seen: set[type[BaseModel]] = set()
    missing = [field for kind in KINDS.values() for field in _undocumented(kind, seen)]
    assert missing == []
    assert len(seen) > 20  # the walk reached the nested models


def _sandbox(**spec: Any) -> dict[str, Any]:
    base = {"template": {"image": "python:3.12", "ports": [{"name": "http", "containerPort": 80}]}}
    return {"apiVersion": "kocoon.io/v1alpha1", "kind": "Sandbox", "spec": {**base, **spec}}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"unknownField": 1}, "unknownField"),
        ({"idleTimeout": "ten minutes"}, "idleTimeout"),
        ({"idleTimeout": "0s"}, "idleTimeout"),
        ({"workspace": {"size": "-1Gi"}}, "workspace.size"),
        ({"workspace": {"size": "0"}}, "workspace.size"),
        ({"operatingMode": "Suspended"}, "operatingMode"),
        ({"hibernation": "filesystem"}, "workspace"),
        ({"network": {"exposedPorts": ["grpc"]}}, "exposedPorts"),
        (
            {"network": {"egress": {"allow": [{"cidr": "10.0.0.0/8", "host": "a.b"}]}}},
            "exactly one",
        ),
        ({"network": {"egress": {"allow": [{"cidr": "10.0.0.300/8"}]}}}, "CIDR"),
        ({"runtimeClassName": "Kata_Containers"}, "runtimeClassName"),
    ],
)
def test_sandbox_rejects(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Sandbox.model_validate(_sandbox(**spec))


def test_python_names_and_wire_names() -> None:
    sandbox = Sandbox.model_validate(_sandbox(idleTimeout="10m", runtimeClassName="runc"))
    assert sandbox.spec.runtime_class_name == "runc"
    assert sandbox.spec.idle_timeout is not None
    assert sandbox.spec.idle_timeout.total_seconds() == 600
    assert sandbox.to_wire()["spec"]["runtimeClassName"] == "runc"


def test_session_idle_shorter_than_lifetime() -> None:
    document = {
        "kind": "AgentSession",
        "spec": {
            "owner": {"user": "alice"},
            "sandboxTemplate": {"template": {"image": "busybox"}},
            "idleTimeout": "2h",
            "maxLifetime": "1h",
        },
    }
    with pytest.raises(ValidationError, match="maxLifetime"):
        AgentSession.model_validate(document)


def test_model_replicas_within_bounds() -> None:
    document = {
        "kind": "ModelDeployment",
        "spec": {
            "model": {"uri": "hf://org/name"},
            "engine": {"type": "vllm"},
            "scaling": {"minReplicas": 3, "maxReplicas": 2},
        },
    }
    with pytest.raises(ValidationError, match="minReplicas"):
        ModelDeployment.model_validate(document)
    document["spec"]["scaling"] = {"minReplicas": 0, "maxReplicas": 2}
    assert ModelDeployment.model_validate(document).spec.scaling.min_replicas == 0
