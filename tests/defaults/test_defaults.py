"""The configuration-dependent defaults: one rule for hibernation, one for the runtime class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kocoon import defaults
from kocoon.api.sandbox import SandboxSpec
from kocoon.builders.context import BuildSettings
from kocoon.config import OperatorConfig

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONFIG = (
    OperatorConfig()
)  # kata by default, runc checkpoints memory, GPUs under kata-qemu-nvidia-gpu
WORKSPACE = {"workspace": {"size": "1Gi"}}
WHOLE_GPU = {"gpu": {"mode": "wholeGPU"}}
MIG = {"gpu": {"mode": "mig", "profile": "1g.10gb"}}


def spec(**fields: Any) -> SandboxSpec:
    return SandboxSpec.model_validate({"template": {"image": "busybox"}, **fields})


@pytest.mark.parametrize(
    ("config", "fields", "expected"),
    [
        # memory where the runtime class can checkpoint it
        (CONFIG, {"runtimeClassName": "runc"}, "memory"),
        (CONFIG, {"runtimeClassName": "runc", **WORKSPACE}, "memory"),
        # Kata without a VM-snapshot driver: the workspace if there is one, else nothing
        (CONFIG, {"runtimeClassName": "kata", **WORKSPACE}, "filesystem"),
        (CONFIG, {"runtimeClassName": "kata"}, "none"),
        (CONFIG, {}, "none"),  # the default runtime class is kata
        (OperatorConfig(vm_snapshot_runtime_classes=["kata"]), {}, "memory"),
        # a GPU the runtime class cannot checkpoint rules memory out, even under runc
        (CONFIG, {"runtimeClassName": "runc", **WHOLE_GPU}, "none"),
        (CONFIG, {"runtimeClassName": "runc", **WHOLE_GPU, **WORKSPACE}, "filesystem"),
        (
            OperatorConfig(gpu_memory_checkpoint_runtime_classes=["runc"]),
            {"runtimeClassName": "runc", **WHOLE_GPU},
            "memory",
        ),
        (
            OperatorConfig(gpu_memory_checkpoint_runtime_classes=["runc"]),
            {"runtimeClassName": "runc", **MIG, **WORKSPACE},
            "filesystem",
        ),
        # a GPU with no runtime class named runs under the GPU default, which is judged
        (
            OperatorConfig(
                default_gpu_runtime_class="runc", gpu_memory_checkpoint_runtime_classes=["runc"]
            ),
            WHOLE_GPU,
            "memory",
        ),
        # what the spec says wins
        (CONFIG, {"runtimeClassName": "runc", "hibernation": "none"}, "none"),
        (CONFIG, {"runtimeClassName": "kata", "hibernation": "memory"}, "memory"),
    ],
)
def test_effective_hibernation(
    config: OperatorConfig, fields: dict[str, Any], expected: str
) -> None:
    assert defaults.effective_hibernation(spec(**fields), config) == expected


def test_gpu_pods_get_the_gpu_runtime_class() -> None:
    assert defaults.runtime_class_for(None, False, CONFIG) == "kata"
    assert defaults.runtime_class_for(None, True, CONFIG) == "kata-qemu-nvidia-gpu"
    assert defaults.runtime_class_for("runc", True, CONFIG) == "runc"
    no_gpu_default = OperatorConfig(default_gpu_runtime_class=None)
    assert defaults.runtime_class_for(None, True, no_gpu_default) == "kata"


def test_build_settings_answer_like_the_configuration() -> None:
    settings = BuildSettings(default_runtime_class="runc", default_gpu_runtime_class="gpu-rc")
    assert defaults.runtime_class_for(None, True, settings) == "gpu-rc"
    assert defaults.runtime_class_for(None, False, settings) == "runc"


def test_the_rule_in_words_is_what_the_docs_say() -> None:
    text = defaults.hibernation_rule()
    for words in ("`memory`", "VM-snapshot", "GPU", "`filesystem` when there is a workspace"):
        assert words in text
    lifecycle = " ".join((ROOT / "docs" / "lifecycle.md").read_text().split())
    assert text in lifecycle, "docs/lifecycle.md must quote defaults.HIBERNATION_RULE verbatim"
    # The field's description, and so the CRD, `kubectl explain` and docs/api.md, says the same.
    description = SandboxSpec.model_fields["hibernation"].description or ""
    assert text in " ".join(description.split())
