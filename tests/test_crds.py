"""The generated CRDs: up to date with the models, structural, and carrying the API's markers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kocoon import crds

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_generated_files_are_up_to_date() -> None:
    stale = crds.stale(ROOT, crds.generated_files())
    assert stale == [], f"regenerate with `kocoon crds`: {stale}"


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    files = {Path("crds/x.yaml"): "new\n"}
    assert crds.main(["--out", str(tmp_path), "--check"], files=lambda: files) == 1
    assert crds.main(["--out", str(tmp_path)], files=lambda: files) == 0
    assert (tmp_path / "crds/x.yaml").read_text() == "new\n"
    assert crds.main(["--out", str(tmp_path), "--check"], files=lambda: files) == 0


def _nodes(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += _nodes(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            found += _nodes(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _nodes(node["additionalProperties"], f"{path}.*")
    return found


@pytest.mark.parametrize("kind", crds.KINDS, ids=lambda kind: kind.kind)
def test_schema_is_structural(kind: crds.Kind) -> None:
    schema = crds.openapi_schema(kind.model)
    text = yaml.safe_dump(schema)
    assert "$ref" not in text
    assert "null" not in text
    assert "x-kubernetes-preserve-unknown-fields" not in text
    for path, node in _nodes(schema):
        if path in {".metadata"}:
            continue
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if path.count(".") >= 1 and not path.endswith(("[]", ".*")):
            assert node.get("description"), f"{kind.kind}{path} has no description"


@pytest.mark.parametrize("kind", crds.KINDS, ids=lambda kind: kind.kind)
def test_crd_markers(kind: crds.Kind) -> None:
    document = crds.crd(kind)
    names = document["spec"]["names"]
    assert names["categories"] == ["kocoon"]
    version = document["spec"]["versions"][0]
    assert "status" in version["subresources"]
    columns = {column["name"] for column in version["additionalPrinterColumns"]}
    assert {"Phase", "Ready", "Idle For", "GPU", "Age"} <= columns
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "conditions"
    ]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_short_names_and_scale() -> None:
    by_kind = {kind.kind: crds.crd(kind) for kind in crds.KINDS}
    assert by_kind["Sandbox"]["spec"]["names"]["shortNames"] == ["sbx"]
    assert by_kind["AgentSession"]["spec"]["names"]["shortNames"] == ["as"]
    assert by_kind["ModelDeployment"]["spec"]["names"]["shortNames"] == ["md"]
    scale = by_kind["ModelDeployment"]["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "scale" not in by_kind["Sandbox"]["spec"]["versions"][0]["subresources"]


def test_transform_quirks() -> None:
    defs = {"Inner": {"type": "object", "title": "Inner", "properties": {"a": {"type": "string"}}}}
    node = {
        "anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}],
        "default": None,
        "description": "outer\n  text",
    }
    assert crds.structural(node, defs) == {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "description": "outer text",
    }
    assert crds.structural({"type": "integer", "exclusiveMinimum": 0}, {}) == {
        "type": "integer",
        "minimum": 0,
        "exclusiveMinimum": True,
    }
    closed = {"type": "object", "properties": {}, "additionalProperties": False}
    assert "additionalProperties" not in crds.structural(closed, {})


def test_docs_cover_every_spec_field() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    for kind in crds.KINDS:
        schema = crds.openapi_schema(kind.model)
        for path, _ in _nodes(schema["properties"]["spec"], "spec"):
            if path != "spec" and not path.endswith((".*", "[]")):
                assert f"`{path}`" in text, path
