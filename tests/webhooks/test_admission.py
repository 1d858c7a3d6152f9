"""Admission decisions as data: what is refused (naming the field) and which defaults are set."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from kocoon.api.model import URI_SHAPES, ModelDeploymentSpec
from kocoon.api.sandbox import SandboxSpec
from kocoon.api.session import AgentSessionSpec
from kocoon.config import ModelSourceScheme, NamespaceLimits, OperatorConfig
from kocoon.webhooks import admission, handlers
from kocoon.webhooks.admission import ClusterFacts

pytestmark = pytest.mark.unit

CONFIG = OperatorConfig()
FACTS = ClusterFacts(
    namespace="team-a", creating=True, runtime_classes={"kata", "runc", "kata-qemu-nvidia-gpu"}
)


def sandbox(**spec: Any) -> SandboxSpec:
    return SandboxSpec.model_validate({"template": {"image": "busybox"}, **spec})


def test_a_plain_sandbox_passes() -> None:
    assert admission.validate_sandbox(sandbox(), CONFIG, FACTS) == []


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"runtimeClassName": "gvisor"}, "spec.runtimeClassName", "not offered"),
        ({"gpu": {"mode": "hami", "memory": "8Gi"}}, "spec.gpu.mode", "not offered"),
        ({"runtimeClassName": "kata", "hibernation": "memory"}, "spec.hibernation", "VM-snapshot"),
        (
            {"runtimeClassName": "runc", "hibernation": "memory", "gpu": {"mode": "wholeGPU"}},
            "spec.hibernation",
            "with a GPU",
        ),
        (
            {"template": {"image": "x", "securityContext": {"runAsNonRoot": False}}},
            "spec.template.securityContext.runAsNonRoot",
            "non-root",
        ),
    ],
)
def test_sandbox_refusals_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    problems = admission.validate_sandbox(sandbox(**spec), CONFIG, FACTS)
    assert len(problems) == 1
    assert problems[0].startswith(f"{field}:")
    assert words in problems[0]


def test_runtime_class_must_exist_in_the_cluster() -> None:
    facts = ClusterFacts(namespace="a", creating=True, runtime_classes={"kata"})
    problems = admission.validate_sandbox(sandbox(runtimeClassName="runc"), CONFIG, facts)
    assert problems == [
        "spec.runtimeClassName: RuntimeClass 'runc' does not exist in the cluster;"
        " create it (see gpu/) or use another runtime class"
    ]


def test_unknown_runtime_classes_are_not_checked_for_existence() -> None:
    facts = ClusterFacts(namespace="a", creating=True, runtime_classes=None)
    spec = sandbox(runtimeClassName="kata-qemu-nvidia-gpu")
    assert admission.validate_sandbox(spec, CONFIG, facts) == []


def test_memory_with_whole_gpu_is_allowed_where_configured() -> None:
    config = OperatorConfig(gpu_memory_checkpoint_runtime_classes=["runc"])
    spec = sandbox(runtimeClassName="runc", hibernation="memory", gpu={"mode": "wholeGPU"})
    assert admission.validate_sandbox(spec, config, FACTS) == []
    mig = sandbox(
        runtimeClassName="runc", hibernation="memory", gpu={"mode": "mig", "profile": "1g.10gb"}
    )
    assert "with a GPU (mode mig)" in admission.validate_sandbox(mig, config, FACTS)[0]


def test_kata_with_vm_snapshot_driver_can_hibernate_memory() -> None:
    config = OperatorConfig(vm_snapshot_runtime_classes=["kata"])
    spec = sandbox(runtimeClassName="kata", hibernation="memory")
    assert admission.validate_sandbox(spec, config, FACTS) == []


def test_namespace_limits() -> None:
    config = OperatorConfig(
        namespace_limits={
            "team-a": NamespaceLimits(
                max_sandboxes=2,
                max_gpus_per_object=1,
                max_workspace_size="10Gi",
                allowed_runtime_classes=["kata"],
            )
        }
    )
    full = ClusterFacts(namespace="team-a", creating=True, objects_in_namespace=2)
    problems = admission.validate_sandbox(
        sandbox(
            runtimeClassName="runc",
            gpu={"mode": "wholeGPU", "count": 2},
            workspace={"size": "20Gi"},
        ),
        config,
        full,
    )
    fields = sorted(problem.split(":")[0] for problem in problems)
    assert fields == [
        "metadata.namespace",
        "spec.gpu.count",
        "spec.runtimeClassName",
        "spec.workspace.size",
    ]
    updating = ClusterFacts(namespace="team-a", creating=False, objects_in_namespace=2)
    assert admission.validate_sandbox(sandbox(runtimeClassName="kata"), config, updating) == []
    elsewhere = ClusterFacts(namespace="team-b", creating=True, objects_in_namespace=50)
    assert admission.validate_sandbox(sandbox(runtimeClassName="runc"), config, elsewhere) == []


def test_session_hibernation_overrides_its_template() -> None:
    spec = AgentSessionSpec.model_validate(
        {
            "owner": {"user": "alice"},
            "sandboxTemplate": {"template": {"image": "x"}, "runtimeClassName": "runc"},
            "hibernation": "memory",
        }
    )
    assert admission.validate_session(spec, CONFIG, FACTS) == []
    kata = spec.model_copy(
        update={
            "sandbox_template": spec.sandbox_template.model_copy(
                update={"runtime_class_name": "kata"}
            )
        }
    )
    problems = admission.validate_session(kata, CONFIG, FACTS)
    assert problems
    assert problems[0].startswith("spec.hibernation:")


def test_model_checkpoint_wake_with_mig_is_refused() -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": "hf://org/m"},
            "engine": {"type": "vllm"},
            "gpu": {"mode": "mig", "profile": "1g.10gb"},
            "runtimeClassName": "runc",
            "wakeStrategy": "checkpoint",
        }
    )
    problems = admission.validate_model(spec, CONFIG, FACTS)
    assert [p.split(":")[0] for p in problems] == ["spec.wakeStrategy"]
    assert "mode mig" in problems[0]


def test_defaults_depend_on_configuration() -> None:
    plain = {"template": {"image": "x"}, "workspace": {"size": "1Gi"}}
    assert admission.sandbox_spec_defaults(plain, None, CONFIG) == {
        "runtimeClassName": "kata",
        "hibernation": "filesystem",
        "template": {"securityContext": {"runAsNonRoot": True}},
    }
    runc = OperatorConfig(default_runtime_class="runc", pod_hardening=False)
    assert admission.sandbox_spec_defaults({"template": {"image": "x"}}, None, runc) == {
        "runtimeClassName": "runc",
        "hibernation": "memory",
    }
    gpu = {"template": {"image": "x"}, "gpu": {"mode": "wholeGPU"}}
    assert admission.sandbox_spec_defaults(gpu, None, CONFIG)["runtimeClassName"] == (
        "kata-qemu-nvidia-gpu"
    )
    assert admission.sandbox_spec_defaults(gpu, None, CONFIG)["hibernation"] == "none"


def test_defaults_keep_what_is_set_and_what_was_set() -> None:
    spec = {
        "template": {"image": "x", "securityContext": {"runAsNonRoot": True}},
        "runtimeClassName": "runc",
        "hibernation": "none",
    }
    assert admission.sandbox_spec_defaults(spec, None, CONFIG) == {}
    replaced = {
        "template": {"image": "y", "securityContext": {"runAsNonRoot": True}},
        "hibernation": "none",
    }
    old = {"runtimeClassName": "runc"}
    assert admission.sandbox_spec_defaults(replaced, old, CONFIG) == {"runtimeClassName": "runc"}
    assert admission.sandbox_spec_defaults(spec, None, CONFIG, session_hibernation="memory") == {}


def test_model_defaults() -> None:
    spec = {"model": {"uri": "hf://o/m"}, "engine": {"type": "vllm"}, "gpu": {"mode": "wholeGPU"}}
    assert admission.model_spec_defaults(spec, None, CONFIG) == {
        "runtimeClassName": "kata-qemu-nvidia-gpu"
    }
    assert admission.model_spec_defaults({**spec, "runtimeClassName": "runc"}, None, CONFIG) == {}


def model_spec(**spec: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {"model": {"uri": "hf://org/m"}, "engine": {"type": "vllm"}, "runtimeClassName": "runc"}
        | spec
    )


def test_model_sources_the_configuration_offers_are_the_apis() -> None:
    schemes = {scheme.removesuffix("://") for scheme, _, _ in URI_SHAPES}
    assert set(get_args(ModelSourceScheme)) == schemes
    assert set(OperatorConfig().model_sources) == schemes


@pytest.mark.parametrize(
    ("config", "spec", "field", "words"),
    [
        (
            OperatorConfig(model_sources=["pvc", "s3"]),
            {"model": {"uri": "oci://registry.example/m:1"}},
            "spec.model.uri",
            "oci:// sources cannot be read in this cluster",
        ),
        (
            OperatorConfig(namespace_limits={"*": NamespaceLimits(max_model_replicas=4)}),
            {"scaling": {"maxReplicas": 5}},
            "spec.scaling.maxReplicas",
            "5 exceeds the limit of 4 replicas",
        ),
        (
            OperatorConfig(namespace_limits={"*": NamespaceLimits(max_gpus_per_model=8)}),
            {"scaling": {"maxReplicas": 3}, "gpu": {"mode": "wholeGPU", "count": 4}},
            "spec.scaling.maxReplicas",
            "hold up to 12 GPUs, above the limit of 8",
        ),
        (
            CONFIG,
            {"runtimeClassName": "kata", "engine": {"type": "llamacpp"}},
            "spec.wakeStrategy",
            "waking llamacpp from a checkpoint inside runtime class 'kata'",
        ),
        (
            CONFIG,
            {"gpu": {"mode": "wholeGPU"}},
            "spec.wakeStrategy",
            "waking vllm from a checkpoint with a GPU (mode wholeGPU) cannot work",
        ),
    ],
)
def test_model_refusals_name_the_field(
    config: OperatorConfig, spec: dict[str, Any], field: str, words: str
) -> None:
    if field == "spec.wakeStrategy":
        spec = {**spec, "wakeStrategy": "checkpoint"}
    problems = admission.validate_model(model_spec(**spec), config, FACTS)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}:")
    assert words in problems[0]


def test_model_limits_and_sources_that_fit_pass() -> None:
    config = OperatorConfig(
        namespace_limits={"*": NamespaceLimits(max_model_replicas=4, max_gpus_per_model=8)}
    )
    spec = model_spec(
        scaling={"maxReplicas": 4}, gpu={"mode": "wholeGPU", "count": 2}, wakeStrategy="coldStart"
    )
    assert admission.validate_model(spec, config, FACTS) == []
    cpu = model_spec(engine={"type": "llamacpp"}, wakeStrategy="checkpoint")
    assert admission.validate_model(cpu, CONFIG, FACTS) == []


def test_mig_profiles_no_node_offers() -> None:
    nodes = ClusterFacts(namespace="a", creating=True, mig_profiles_on_nodes={"1g.10gb", "3g.40gb"})
    offered = sandbox(runtimeClassName="runc", gpu={"mode": "mig", "profile": "3g.40gb"})
    assert admission.validate_sandbox(offered, CONFIG, nodes) == []
    missing = sandbox(runtimeClassName="runc", gpu={"mode": "mig", "profile": "7g.80gb"})
    problems = admission.validate_sandbox(missing, CONFIG, nodes)
    assert problems == [
        "spec.gpu.profile: no node offers MIG profile '7g.80gb'; the nodes offer"
        " ['1g.10gb', '3g.40gb'] (or list the profiles the cluster will offer in migProfiles)"
    ]
    # The configuration's list wins (nodes that come and go); no MIG node at all: not judged.
    listed = OperatorConfig(mig_profiles=["7g.80gb"])
    assert admission.validate_sandbox(missing, listed, nodes) == []
    none = ClusterFacts(namespace="a", creating=True, mig_profiles_on_nodes=set())
    assert admission.validate_sandbox(missing, CONFIG, none) == []


def test_the_profiles_a_node_advertises() -> None:
    status = {
        "allocatable": {
            "cpu": "32",
            "nvidia.com/mig-1g.10gb": "7",
            "nvidia.com/mig-3g.40gb": "0",
            "nvidia.com/gpu": "1",
        }
    }
    assert handlers.mig_profiles_offered("n1", status) == {"1g.10gb": "n1"}
    assert handlers.mig_profiles_offered("n2", None) == {}
