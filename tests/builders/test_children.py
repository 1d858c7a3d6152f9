"""Children of a Sandbox, built as data: hardening, GPU slices, storage, network policy."""

from __future__ import annotations

from typing import Any

import pytest

from kocoon.api.conditions import ConditionType, Reason
from kocoon.api.sandbox import SandboxSpec
from kocoon.builders import activity, gpu, names, network, pod, storage
from kocoon.builders.context import BuildSettings, Identity

pytestmark = pytest.mark.unit

OWNER = Identity(name="s1", namespace="team-a", uid="0000-1111")
SETTINGS = BuildSettings(default_runtime_class="kata")


def spec(**fields: Any) -> SandboxSpec:
    template = {"image": "python:3.12", "ports": [{"name": "http", "containerPort": 8080}]}
    return SandboxSpec.model_validate({"template": template, **fields})


def test_pod_is_hardened_and_owned() -> None:
    manifest = pod.pod(OWNER, spec(), SETTINGS)
    assert manifest["spec"]["runtimeClassName"] == "kata"
    assert manifest["spec"]["automountServiceAccountToken"] is False
    assert manifest["spec"]["securityContext"]["runAsNonRoot"] is True
    assert manifest["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = manifest["spec"]["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    owner = manifest["metadata"]["ownerReferences"][0]
    assert (owner["name"], owner["uid"], owner["controller"]) == ("s1", "0000-1111", True)
    assert manifest["metadata"]["labels"][names.SANDBOX_LABEL] == "s1"


ROOT = {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}


def test_the_template_cannot_undo_hardening() -> None:
    template = {"image": "x", "securityContext": ROOT}
    manifest = pod.pod(OWNER, spec(template=template), SETTINGS)
    pod_security = manifest["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == SETTINGS.run_as_user
    security = manifest["spec"]["containers"][0]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert "runAsUser" not in security  # the pod's non-root user applies
    assert security["allowPrivilegeEscalation"] is False
    # another non-root user is the template's to choose
    user = {"image": "x", "securityContext": {"runAsUser": 1000}}
    chosen = pod.pod(OWNER, spec(template=user), SETTINGS)["spec"]["containers"][0]
    assert chosen["securityContext"]["runAsUser"] == 1000


def test_without_hardening_the_template_may_run_as_root_but_never_privileged() -> None:
    settings = BuildSettings(pod_hardening=False)
    plain = pod.pod(OWNER, spec(), settings)
    assert "runAsNonRoot" not in plain["spec"]["securityContext"]
    assert "runAsUser" not in plain["spec"]["securityContext"]
    assert "runAsNonRoot" not in plain["spec"]["containers"][0]["securityContext"]
    template = {"image": "x", "securityContext": ROOT}
    manifest = pod.pod(OWNER, spec(template=template), settings)
    security = manifest["spec"]["containers"][0]["securityContext"]
    assert (security["runAsUser"], security["runAsNonRoot"]) == (0, False)
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_runtime_class_from_spec_wins_over_the_default() -> None:
    assert (
        pod.pod(OWNER, spec(runtimeClassName="runc"), SETTINGS)["spec"]["runtimeClassName"]
        == "runc"
    )


def test_a_gpu_pod_without_a_runtime_class_gets_the_gpu_default() -> None:
    settings = BuildSettings(default_runtime_class="kata", default_gpu_runtime_class="kata-gpu")
    gpu_pod = pod.pod(OWNER, spec(gpu={"mode": "wholeGPU"}), settings)
    assert gpu_pod["spec"]["runtimeClassName"] == "kata-gpu"
    assert pod.pod(OWNER, spec(), settings)["spec"]["runtimeClassName"] == "kata"
    named = pod.pod(OWNER, spec(gpu={"mode": "wholeGPU"}, runtimeClassName="runc"), settings)
    assert named["spec"]["runtimeClassName"] == "runc"


@pytest.mark.parametrize(
    ("slice_", "expected"),
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
def test_gpu_slices_become_the_resources_the_cluster_advertises(
    slice_: dict[str, Any], expected: dict[str, str]
) -> None:
    manifest = pod.pod(OWNER, spec(gpu=slice_), SETTINGS)
    assert manifest["spec"]["containers"][0]["resources"]["limits"] == expected


def test_dra_slice_claims_devices_through_a_template() -> None:
    sandbox = spec(gpu={"mode": "dra", "count": 2, "deviceClassName": "gpu.nvidia.com"})
    template = gpu.claim_template(OWNER, sandbox.gpu)
    assert template is not None
    request = template["spec"]["spec"]["devices"]["requests"][0]
    assert request["exactly"] == {
        "deviceClassName": "gpu.nvidia.com",
        "allocationMode": "ExactCount",
        "count": 2,
    }
    manifest = pod.pod(OWNER, sandbox, SETTINGS)
    assert manifest["spec"]["resourceClaims"] == [
        {"name": "gpu", "resourceClaimTemplateName": names.gpu_claim_template_name("s1")}
    ]
    assert manifest["spec"]["containers"][0]["resources"]["claims"] == [{"name": "gpu"}]


def test_workspace_is_a_claim_mounted_in_the_container() -> None:
    sandbox = spec(workspace={"size": "5Gi", "mountPath": "/data"})
    claim = storage.workspace_claim(OWNER, sandbox)
    assert claim is not None
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    manifest = pod.pod(OWNER, sandbox, SETTINGS)
    assert manifest["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "workspace", "mountPath": "/data"}
    ]
    assert storage.workspace_claim(OWNER, spec()) is None


def test_restore_pins_a_preference_for_the_checkpoint_node() -> None:
    manifest = pod.pod(OWNER, spec(), SETTINGS, restore_from="s1-abc", node_name="n7")
    assert manifest["metadata"]["annotations"][names.RESTORE_FROM_ANNOTATION] == "s1-abc"
    preferred = manifest["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ][0]["preference"]["matchFields"][0]
    assert preferred["values"] == ["n7"]


def test_a_pod_held_for_a_restore_runs_the_hold_command_not_the_program() -> None:
    template = {"image": "busybox", "command": ["serve"], "args": ["--port", "8080"]}
    manifest = pod.pod(
        OWNER,
        spec(template=template),
        SETTINGS,
        restore_from="s1-abc",
        node_name="n7",
        hold_for_restore=True,
    )
    container = manifest["spec"]["containers"][0]
    assert container["command"] == list(SETTINGS.restore_hold_command)
    assert "args" not in container
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    annotations = manifest["metadata"]["annotations"]
    assert annotations[names.HOLD_FOR_RESTORE_ANNOTATION] == "true"
    assert annotations[names.RESTORE_FROM_ANNOTATION] == "s1-abc"
    cold = pod.pod(OWNER, spec(template=template), SETTINGS)
    assert cold["spec"]["containers"][0]["command"] == ["serve"]
    assert names.HOLD_FOR_RESTORE_ANNOTATION not in cold["metadata"].get("annotations", {})


def test_network_policy_denies_egress_by_default_but_dns() -> None:
    policy = network.network_policy(OWNER, spec(), SETTINGS)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress = policy["spec"]["egress"]
    assert len(egress) == 1
    assert egress[0]["ports"] == network.DNS_PORTS


def test_network_policy_allows_listed_cidrs_and_reports_host_rules() -> None:
    sandbox = spec(
        network={
            "egress": {
                "allowDns": False,
                "allow": [{"cidr": "10.0.0.0/8", "ports": [443]}, {"host": "pypi.example.org"}],
            }
        }
    )
    policy = network.network_policy(OWNER, sandbox, SETTINGS)
    assert policy["spec"]["egress"] == [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    ]
    assert network.unenforced_egress_hosts(sandbox) == ["pypi.example.org"]
    condition = network.egress_condition(sandbox)
    assert (condition.type, condition.status) == (ConditionType.EGRESS_ENFORCED, False)
    assert condition.reason is Reason.HOST_RULES_NOT_ENFORCED
    assert "spec.network.egress.allow" in condition.message
    assert "pypi.example.org" in condition.message


def test_egress_is_enforced_when_every_rule_is_a_cidr() -> None:
    condition = network.egress_condition(spec())
    assert (condition.status, condition.reason) == (True, Reason.EGRESS_POLICY_APPLIED)


def test_ingress_only_from_the_router_to_exposed_ports() -> None:
    policy = network.network_policy(OWNER, spec(network={"exposedPorts": ["http"]}), SETTINGS)
    rule = policy["spec"]["ingress"][0]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": SETTINGS.router_namespace
    }


def test_service_is_headless_and_selects_the_sandbox_pod() -> None:
    service = network.service(OWNER, spec())
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {names.SANDBOX_LABEL: "s1"}


def test_activity_lease_carries_only_identity() -> None:
    lease = activity.activity_lease(OWNER)
    assert lease["metadata"]["name"] == "kocoon-activity-sandbox-s1"
    assert "spec" not in lease
