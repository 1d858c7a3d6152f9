"""Random specs through the models and the admission decisions: errors, never crashes."""

from __future__ import annotations

from typing import Any

import pytest
from api_strategies import MODEL_SPECS, SANDBOX_SPECS, session_specs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from kocoon.api.model import ModelDeploymentSpec
from kocoon.api.sandbox import SandboxSpec
from kocoon.api.session import AgentSessionSpec
from kocoon.config import OperatorConfig
from kocoon.webhooks import admission

pytestmark = pytest.mark.unit

CONFIG = OperatorConfig()
FACTS = admission.ClusterFacts(namespace="fuzz", creating=True)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


def _parse(model: type[BaseModel], raw: dict[str, Any]) -> BaseModel | None:
    try:
        parsed = model.model_validate(raw)
    except ValidationError:
        return None
    wire = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert model.model_validate(wire) == parsed  # canonical forms round-trip
    return parsed


@given(SANDBOX_SPECS)
@settings(max_examples=300)
def test_sandbox_specs(raw: dict[str, Any]) -> None:
    parsed = _parse(SandboxSpec, raw)
    if isinstance(parsed, SandboxSpec):
        for problem in admission.validate_sandbox(parsed, CONFIG, FACTS):
            assert problem.startswith(("spec.", "metadata."))
    admission.sandbox_spec_defaults(raw, None, CONFIG)


@given(session_specs())
@settings(max_examples=200)
def test_session_specs(raw: dict[str, Any]) -> None:
    parsed = _parse(AgentSessionSpec, raw)
    if isinstance(parsed, AgentSessionSpec):
        admission.validate_session(parsed, CONFIG, FACTS)


@given(MODEL_SPECS)
@settings(max_examples=200)
def test_model_specs(raw: dict[str, Any]) -> None:
    parsed = _parse(ModelDeploymentSpec, raw)
    if isinstance(parsed, ModelDeploymentSpec):
        admission.validate_model(parsed, CONFIG, FACTS)
    admission.model_spec_defaults(raw, None, CONFIG)


@given(st.dictionaries(st.sampled_from(["template", "gpu", "workspace", "runtimeClassName"]), JSON))
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_defaulting_survives_any_json(raw: dict[str, Any]) -> None:
    # Mutating webhooks run before schema validation, so they see whatever was sent.
    patch = admission.sandbox_spec_defaults(raw, raw, CONFIG)
    assert "runtimeClassName" not in patch or "runtimeClassName" not in raw
