"""Operator configuration: defaults for the local cluster, YAML file and environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kocoon.config import OperatorConfig, load_config

pytestmark = pytest.mark.unit


def test_defaults_fit_the_local_cluster() -> None:
    config = load_config(environ={})
    assert config.default_runtime_class == "kata"
    assert set(config.runtime_classes) == {"kata", "kata-qemu-nvidia-gpu", "runc"}
    assert config.gpu_modes == ["wholeGPU", "mig", "timeSliced", "dra"]
    assert config.can_checkpoint_memory("runc")
    assert not config.can_checkpoint_memory("kata")


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "defaultRuntimeClass: runc\ngpuModes: [mig]\nnamespaceLimits:\n  '*': {maxSandboxes: 3}\n"
    )
    config = load_config(environ={"KOCOON_CONFIG": str(path), "KOCOON_ROUTER_DOMAIN": "x.test"})
    assert config.default_runtime_class == "runc"
    assert config.gpu_modes == ["mig"]
    assert config.router_domain == "x.test"
    limits = config.limits_for("anything")
    assert limits is not None
    assert limits.max_sandboxes == 3
    overridden = load_config(path, environ={"KOCOON_GPU_MODES": '["dra"]'})
    assert overridden.gpu_modes == ["dra"]


def test_inconsistent_configuration_is_refused() -> None:
    with pytest.raises(ValidationError, match="defaultRuntimeClass"):
        OperatorConfig(default_runtime_class="gvisor")
    with pytest.raises(ValidationError, match=r"gpuModes|gpu_modes"):
        OperatorConfig.model_validate({"gpuModes": ["mps"]})
    with pytest.raises(ValidationError):
        OperatorConfig.model_validate({"unknownKey": 1})
