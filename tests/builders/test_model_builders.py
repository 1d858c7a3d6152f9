"""A ModelDeployment's replica pods, Service, cache claim, NetworkPolicy and GPU claim, as data;
and, on a local cluster's API server (dry run), valid for each engine."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from kocoon import contract
from kocoon.api.model import ModelDeploymentSpec
from kocoon.builders import engines, gpu, names
from kocoon.builders import model as builder
from kocoon.builders.context import BuildSettings

OWNER = builder.identity("llm", "team-a", "0000-1111")
SETTINGS = BuildSettings()
S3 = {"endpoint": "http://10.0.0.9:9000", "credentialsSecretRef": {"name": "s3-creds"}}


def spec(**fields: Any) -> ModelDeploymentSpec:
    document: dict[str, Any] = {
        "model": {"uri": "pvc://weights/llama/8b"},
        "engine": {"type": "vllm"},
        **fields,
    }
    return ModelDeploymentSpec.model_validate(document)


def pod(model_spec: ModelDeploymentSpec, index: int = 0, **options: Any) -> dict[str, Any]:
    return builder.replica_pod(OWNER, model_spec, SETTINGS, index, **options)


def engine_of(manifest: dict[str, Any]) -> dict[str, Any]:
    (container,) = manifest["spec"]["containers"]
    assert container["name"] == contract.ENGINE_CONTAINER
    return container


def volume(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in manifest["spec"]["volumes"] if v["name"] == name]
    return found


def mount(container: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [m for m in container["volumeMounts"] if m["name"] == name]
    return found


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.unit
def test_replica_pod_is_named_labelled_owned_and_hardened() -> None:
    manifest = pod(spec(), index=3)
    metadata = manifest["metadata"]
    assert metadata["name"] == "kocoon-model-llm-3" == builder.replica_pod_name("llm", 3)
    assert metadata["namespace"] == "team-a"
    assert metadata["labels"][contract.MODEL_LABEL] == "llm"
    assert metadata["labels"][contract.REPLICA_LABEL] == "3"
    assert metadata["labels"][names.MANAGED_BY_LABEL] == names.MANAGED_BY
    (owner,) = metadata["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("ModelDeployment", "llm", "0000-1111")
    assert owner["controller"] is True
    pod_spec = manifest["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["enableServiceLinks"] is False
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] == SETTINGS.run_as_user
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = engine_of(manifest)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsNonRoot"] is True
    # The runtime class default of a Sandbox: the configured one, the GPU one with a GPU.
    assert pod_spec["runtimeClassName"] == SETTINGS.default_runtime_class
    assert pod(spec(gpu={"mode": "wholeGPU"}))["spec"]["runtimeClassName"] == (
        SETTINGS.default_gpu_runtime_class
    )
    assert pod(spec(runtimeClassName="runc"))["spec"]["runtimeClassName"] == "runc"


@pytest.mark.unit
def test_selector_served_name_and_engine_port() -> None:
    assert builder.selector("llm") == f"{contract.MODEL_LABEL}=llm"
    assert builder.served_model_name(OWNER, spec()) == "llm"
    named = spec(route={"servedModelName": "llama-8b"})
    assert builder.served_model_name(OWNER, named) == "llama-8b"
    args = engine_of(pod(named))["args"]
    assert args[args.index("--served-model-name") + 1] == "llama-8b"
    assert engine_of(pod(named))["ports"][0]["containerPort"] == contract.ENGINE_PORT


@pytest.mark.unit
@pytest.mark.parametrize(
    ("slice_", "limits"),
    [
        ({"mode": "wholeGPU", "count": 2}, {"nvidia.com/gpu": "2"}),
        ({"mode": "mig", "profile": "1g.10gb"}, {"nvidia.com/mig-1g.10gb": "1"}),
        ({"mode": "timeSliced"}, {"nvidia.com/gpu.shared": "1"}),
        (
            {"mode": "hami", "memory": "8Gi", "cores": 30},
            {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "8192", "nvidia.com/gpucores": "30"},
        ),
    ],
)
def test_gpu_slices_become_extended_resources(
    slice_: dict[str, Any], limits: dict[str, str]
) -> None:
    container = engine_of(pod(spec(gpu=slice_, resources={"limits": {"memory": "16Gi"}})))
    assert container["resources"]["limits"] == {"memory": "16Gi", **limits}


@pytest.mark.unit
def test_dra_slice_claims_from_the_deployments_template() -> None:
    model_spec = spec(gpu={"mode": "dra", "deviceClassName": "gpu.nvidia.com", "count": 2})
    manifest = pod(model_spec)
    assert manifest["spec"]["resourceClaims"] == [
        {"name": gpu.DRA_CLAIM_NAME, "resourceClaimTemplateName": "kocoon-model-llm-gpu"}
    ]
    assert engine_of(manifest)["resources"]["claims"] == [{"name": gpu.DRA_CLAIM_NAME}]
    template = builder.gpu_claim_template(OWNER, model_spec)
    assert template is not None
    assert template["metadata"]["name"] == "kocoon-model-llm-gpu"
    assert template["metadata"]["labels"][contract.MODEL_LABEL] == "llm"
    request = template["spec"]["spec"]["devices"]["requests"][0]["exactly"]
    assert (request["deviceClassName"], request["count"]) == ("gpu.nvidia.com", 2)
    assert builder.gpu_claim_template(OWNER, spec()) is None


@pytest.mark.unit
def test_pvc_source_is_mounted_read_only_with_its_path() -> None:
    manifest = pod(spec())
    assert volume(manifest, builder.MODEL_VOLUME)["persistentVolumeClaim"] == {
        "claimName": "weights",
        "readOnly": True,
    }
    container = engine_of(manifest)
    source = mount(container, builder.MODEL_VOLUME)
    assert source == {
        "name": builder.MODEL_VOLUME,
        "mountPath": builder.MODEL_PATH,
        "readOnly": True,
        "subPath": "llama/8b",
    }
    assert container["args"][0] == builder.MODEL_PATH
    assert "initContainers" not in manifest["spec"]


@pytest.mark.unit
def test_oci_source_is_an_image_volume_and_path_picks_the_file() -> None:
    model_spec = spec(
        model={"uri": "oci://kocoon.local/smollm2:local", "path": "models/m.gguf"},
        engine={"type": "llamacpp"},
    )
    manifest = pod(model_spec)
    assert volume(manifest, builder.MODEL_VOLUME)["image"] == {
        "reference": "kocoon.local/smollm2:local",
        "pullPolicy": SETTINGS.model_image_pull_policy,
    }
    container = engine_of(manifest)
    assert mount(container, builder.MODEL_VOLUME)["readOnly"] is True
    args = container["args"]
    assert args[args.index("-m") + 1] == "/models/source/models/m.gguf"
    assert "initContainers" not in manifest["spec"]
    assert all(v["name"] != builder.SHM_VOLUME for v in manifest["spec"]["volumes"])


@pytest.mark.unit
def test_s3_object_is_downloaded_into_the_cache_by_the_aws_cli() -> None:
    model_spec = spec(
        model={"uri": "s3://models/smol/m.gguf", "s3": {**S3, "region": "eu-west-1"}},
        engine={"type": "llamacpp"},
        cache={"size": "2Gi", "storageClassName": "fast"},
    )
    manifest = pod(model_spec)
    assert volume(manifest, builder.MODEL_VOLUME)["persistentVolumeClaim"] == {
        "claimName": "kocoon-model-llm-cache"
    }
    (init,) = manifest["spec"]["initContainers"]
    assert init["image"] == SETTINGS.s3_download_image
    assert init["command"][:2] == ["/bin/sh", "-c"]
    assert "aws s3" in init["command"][2]
    values = env(init)
    assert values["SOURCE"] == "s3://models/smol/m.gguf"
    assert values["S3_ENDPOINT"] == "http://10.0.0.9:9000"
    assert values["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert values["TARGET"] == "s3/models/smol"
    assert values["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert values["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert mount(init, builder.MODEL_VOLUME)["mountPath"] == builder.DOWNLOAD_PATH
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    container = engine_of(manifest)
    assert mount(container, builder.MODEL_VOLUME)["subPath"] == "s3/models/smol"
    args = container["args"]
    assert args[args.index("-m") + 1] == "/models/source/m.gguf"
    claim = builder.cache_claim(OWNER, model_spec)
    assert claim is not None
    assert claim["metadata"]["name"] == "kocoon-model-llm-cache"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "fast"


@pytest.mark.unit
def test_s3_prefix_without_cache_lands_in_a_scratch_volume() -> None:
    model_spec = spec(model={"uri": "s3://models/llama/", "s3": S3})
    manifest = pod(model_spec)
    assert volume(manifest, builder.MODEL_VOLUME) == {"name": builder.MODEL_VOLUME, "emptyDir": {}}
    (init,) = manifest["spec"]["initContainers"]
    assert env(init)["SOURCE"] == "s3://models/llama/"  # a directory: `aws s3 sync`
    assert engine_of(manifest)["args"][0] == builder.MODEL_PATH
    assert builder.cache_claim(OWNER, model_spec) is None


@pytest.mark.unit
def test_hf_source_downloads_with_huggingface_hub_in_the_engine_image() -> None:
    model_spec = spec(
        model={
            "uri": "hf://Qwen/Qwen3-0.6B",
            "revision": "abc123",
            "hf": {"tokenSecretRef": {"name": "hf", "key": "token"}},
        },
        cache={"size": "10Gi"},
    )
    manifest = pod(model_spec)
    (init,) = manifest["spec"]["initContainers"]
    assert init["image"] == SETTINGS.engine_images.vllm
    assert init["command"][:2] == ["python3", "-c"]
    assert "snapshot_download" in init["command"][2]
    values = env(init)
    assert values["HF_REPO"] == "Qwen/Qwen3-0.6B"
    assert values["HF_REVISION"] == "abc123"
    assert values["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert (
        mount(engine_of(manifest), builder.MODEL_VOLUME)["subPath"] == "hf/Qwen/Qwen3-0.6B/abc123"
    )


@pytest.mark.unit
def test_hf_source_for_llamacpp_needs_a_download_image() -> None:
    model_spec = spec(model={"uri": "hf://org/gguf", "path": "m.gguf"}, engine={"type": "llamacpp"})
    with pytest.raises(builder.ModelSourceError, match=r"model\.uri: hf:// .*hfDownloadImage"):
        pod(model_spec)
    settings = BuildSettings(hf_download_image="python-with-hub:1")
    manifest = builder.replica_pod(OWNER, model_spec, settings, 0)
    assert manifest["spec"]["initContainers"][0]["image"] == "python-with-hub:1"


@pytest.mark.unit
def test_gpu_engines_get_a_memory_backed_dev_shm() -> None:
    manifest = pod(spec(engine={"type": "sglang"}))
    assert volume(manifest, builder.SHM_VOLUME)["emptyDir"] == {
        "medium": "Memory",
        "sizeLimit": SETTINGS.engine_shm_size,
    }
    assert mount(engine_of(manifest), builder.SHM_VOLUME)["mountPath"] == "/dev/shm"


@pytest.mark.unit
def test_hold_for_restore_runs_the_hold_command_without_probes_or_downloads() -> None:
    model_spec = spec(model={"uri": "s3://models/m/", "s3": S3}, wakeStrategy="checkpoint")
    manifest = pod(model_spec, restore_from="ckpt-1", node_name="node-a", hold_for_restore=True)
    container = engine_of(manifest)
    assert container["command"] == list(SETTINGS.restore_hold_command)
    assert "args" not in container
    assert "readinessProbe" not in container
    assert "initContainers" not in manifest["spec"]
    annotations = manifest["metadata"]["annotations"]
    assert annotations[names.RESTORE_FROM_ANNOTATION] == "ckpt-1"
    assert annotations[names.HOLD_FOR_RESTORE_ANNOTATION] == "true"
    preferred = manifest["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred[0]["preference"]["matchFields"][0]["values"] == ["node-a"]


@pytest.mark.unit
def test_service_selects_the_replicas_on_the_engine_port() -> None:
    manifest = builder.service(OWNER)
    assert manifest["metadata"]["name"] == "kocoon-model-llm"
    assert manifest["spec"]["type"] == "ClusterIP"
    assert manifest["spec"]["selector"] == {contract.MODEL_LABEL: "llm"}
    (port,) = manifest["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (contract.ENGINE_PORT, engines.PORT_NAME)


@pytest.mark.unit
def test_network_policy_admits_only_router_and_operator_and_reaches_only_dns_and_source() -> None:
    policy = builder.network_policy(OWNER, spec(), SETTINGS)["spec"]
    assert policy["podSelector"] == {"matchLabels": {contract.MODEL_LABEL: "llm"}}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": contract.ENGINE_PORT}]
    selected = [peer["podSelector"]["matchLabels"] for peer in ingress["from"]]
    assert selected == [SETTINGS.router_pod_labels, SETTINGS.operator_pod_labels]
    for peer in ingress["from"]:
        namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        assert namespace == SETTINGS.router_namespace
    (dns,) = policy["egress"]  # a pvc:// source needs nothing else
    assert {p["port"] for p in dns["ports"]} == {53}

    s3_ip = builder.network_policy(OWNER, spec(model={"uri": "s3://bucket/k", "s3": S3}), SETTINGS)
    assert s3_ip["spec"]["egress"][1] == {
        "ports": [{"protocol": "TCP", "port": 9000}],
        "to": [{"ipBlock": {"cidr": "10.0.0.9/32"}}],
    }
    named = {**S3, "endpoint": "https://s3.example.com"}
    s3_named = builder.network_policy(
        OWNER, spec(model={"uri": "s3://bucket/k", "s3": named}), SETTINGS
    )
    assert s3_named["spec"]["egress"][1] == {"ports": [{"protocol": "TCP", "port": 443}]}
    hf = builder.network_policy(OWNER, spec(model={"uri": "hf://o/m"}), SETTINGS)
    assert hf["spec"]["egress"][1] == {"ports": [{"protocol": "TCP", "port": 443}]}


@pytest.mark.unit
def test_children_and_activity_lease() -> None:
    model_spec = spec(
        cache={"size": "1Gi"}, gpu={"mode": "dra", "deviceClassName": "gpu.nvidia.com"}
    )
    kinds = [child["kind"] for child in builder.children(OWNER, model_spec, SETTINGS)]
    assert kinds == ["Service", "NetworkPolicy", "PersistentVolumeClaim", "ResourceClaimTemplate"]
    assert [c["kind"] for c in builder.children(OWNER, spec(), SETTINGS)] == [
        "Service",
        "NetworkPolicy",
    ]
    lease = builder.activity_lease(OWNER)
    assert lease["metadata"]["name"] == contract.activity_lease_name(
        contract.TARGET_KIND_MODEL, "llm"
    )
    assert lease["metadata"]["labels"][contract.TARGET_KIND_LABEL] == contract.TARGET_KIND_MODEL
    assert lease["metadata"]["labels"][contract.TARGET_NAME_LABEL] == "llm"


# --- server-side validation -----------------------------------------------------------------

NAMESPACE = f"kocoon-model-builders-{os.getpid()}"

DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "vllm": {
        "model": {"uri": "hf://Qwen/Qwen3-0.6B", "revision": "main"},
        "engine": {"type": "vllm"},
        "gpu": {"mode": "mig", "profile": "1g.10gb"},
        "cache": {"size": "10Gi"},
        "wakeStrategy": "engineSleep",
    },
    "sglang": {
        "model": {"uri": "s3://models/qwen/", "s3": S3},
        "engine": {"type": "sglang"},
        "gpu": {"mode": "dra", "deviceClassName": "gpu.nvidia.com", "count": 2},
        "wakeStrategy": "engineSleep",
    },
    "trtllm": {
        "model": {"uri": "pvc://weights/llama"},
        "engine": {"type": "trtllm"},
        "gpu": {"mode": "wholeGPU", "count": 2},
        "resources": {"requests": {"cpu": "4", "memory": "32Gi"}},
    },
    "llamacpp": {
        "model": {"uri": "oci://kocoon.local/smollm2:local", "path": "models/m.gguf"},
        "engine": {"type": "llamacpp"},
        "runtimeClassName": "runc",
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
        "wakeStrategy": "engineSleep",
    },
}


@pytest.fixture(scope="module")
def namespace(cluster: Any) -> Any:
    cluster.kubectl("create", "namespace", NAMESPACE)
    yield cluster
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.mark.integration
@pytest.mark.parametrize("engine_type", sorted(DEPLOYMENTS))
def test_built_objects_are_valid_on_the_api_server(namespace: Any, engine_type: str) -> None:
    owner = builder.identity(f"md-{engine_type}", NAMESPACE, "6f1c7a8e-0000-4000-8000-000000000001")
    model_spec = ModelDeploymentSpec.model_validate(DEPLOYMENTS[engine_type])
    objects = [
        *builder.children(owner, model_spec, SETTINGS),
        builder.activity_lease(owner),
        builder.replica_pod(owner, model_spec, SETTINGS, 0),
    ]
    kinds = {o["kind"] for o in objects}
    assert {"Pod", "Service", "NetworkPolicy", "Lease"} <= kinds
    for manifest in objects:
        result = namespace.kubectl(
            "create", "--dry-run=server", "-n", NAMESPACE, "-o", "json", "-f", "-",
            input=json.dumps(manifest), check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{manifest['kind']}: {result.stderr}"
        accepted = json.loads(result.stdout)
        # Nothing was dropped on the way (e.g. an image volume behind a disabled feature gate).
        if manifest["kind"] == "Pod":
            assert [v["name"] for v in accepted["spec"]["volumes"]] == [
                v["name"] for v in manifest["spec"]["volumes"]
            ]
            sent = manifest["spec"]["volumes"][0]
            assert set(sent) <= set(accepted["spec"]["volumes"][0])
            engine = accepted["spec"]["containers"][0]
            assert engine["lifecycle"]["preStop"] == {
                "sleep": {"seconds": SETTINGS.engine_drain_seconds}
            }
