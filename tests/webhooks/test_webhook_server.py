"""The admission webhooks behind the real API server of the local cluster: every rule answers
with its own message naming the field, oversized input gets the schema's answer rather than an
internal error, and an UPDATE is judged only on what it changes, so a configuration change or a
deleted RuntimeClass never blocks labels, an unchanged apply or finalizer removal."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kocoon.api import API_VERSION
from kocoon.config import NamespaceLimits, OperatorConfig
from kocoon.webhooks.run import serve_admission
from kocoon.webhooks.server import WebhookServing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PID = os.getpid()
CONFIGURATION = f"kocoon-rules-{PID}.kocoon.io"
NAMESPACE = f"kocoon-rules-{PID}"
FULL = f"kocoon-rules-full-{PID}"  # a namespace whose limits allow no objects
MISSING_RC = "kocoon-not-created"  # offered by the configuration, absent from the cluster
GONE_RC = f"kocoon-gone-{PID}"  # exists at first, deleted during the update test
DENIED = "denied the request"

BASE = OperatorConfig(
    runtime_classes=["kata", "kata-qemu-nvidia-gpu", "runc", MISSING_RC, GONE_RC],
    # No migProfiles: MIG profiles are judged against what the (kwok) GPU nodes advertise.
    model_sources=["pvc", "s3", "hf"],  # as in a cluster without image volumes
    gpu_modes=["wholeGPU", "mig", "timeSliced", "dra"],
    namespace_limits={
        NAMESPACE: NamespaceLimits(
            max_model_replicas=4,
            max_gpus_per_model=8,
            max_gpus_per_object=4,
            max_workspace_size="5Gi",
            allowed_runtime_classes=["kata", "runc", MISSING_RC, GONE_RC],
        ),
        FULL: NamespaceLimits(max_sandboxes=0, max_sessions=0),
    },
)
# What an operator might change the configuration to later: workspaces limited to 1Gi.
LOWERED = BASE.model_copy(
    update={"namespace_limits": {NAMESPACE: NamespaceLimits(max_workspace_size="1Gi")}}
)


class Holder:
    """The configuration the webhooks read, changeable while they serve."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config

    def __call__(self) -> OperatorConfig:
        return self.config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(what: str, probe: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def served(cluster: Any) -> Iterator[tuple[Any, Holder]]:
    """CRDs, namespaces, and the webhooks served from this process with INFO logging on (as the
    operator runs them: a refusal must not turn into a logging error)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/sandboxes.kocoon.io", "crd/agentsessions.kocoon.io", "crd/modeldeployments.kocoon.io",
    )  # fmt: skip
    for namespace in (NAMESPACE, FULL):
        cluster.kubectl("create", "namespace", namespace)
    logger = logging.getLogger("kocoon.webhooks")
    level = logger.level
    logger.setLevel(logging.INFO)
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    holder = Holder(BASE)
    stop = threading.Event()
    errors: list[BaseException] = []
    serving = WebhookServing(addr="127.0.0.1", port=_free_port(), host="127.0.0.1")

    def run() -> None:
        try:
            asyncio.run(
                serve_admission(holder, serving, configuration_name=CONFIGURATION, stop_flag=stop)
            )
        except BaseException as error:  # reported by the fixture, not lost in the thread
            errors.append(error)

    thread = threading.Thread(target=run, name="kocoon-admission-rules", daemon=True)
    thread.start()
    try:
        probe = sandbox(runtimeClassName="gvisor")

        def answering() -> bool:
            if errors:
                raise RuntimeError(f"the admission server failed: {errors[0]!r}") from errors[0]
            return "is not offered by this cluster" in create(cluster, probe).stderr

        wait_until("the admission webhook", answering, timeout=90)
        mig = sandbox(gpu={"mode": "mig", "profile": "7g.80gb"}, **RUNC)
        wait_until(
            "the webhooks to see the GPU nodes",
            lambda: "no node offers" in create(cluster, mig).stderr,
        )
        yield cluster, holder
    finally:
        stop.set()
        thread.join(timeout=30)
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            cluster.kubectl("delete", kind, CONFIGURATION, "--ignore-not-found", check=False)
        for namespace in (NAMESPACE, FULL):
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "runtimeclass", GONE_RC, "--ignore-not-found", check=False)
        logger.setLevel(level)
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous


def create(cluster: Any, document: dict[str, Any], namespace: str = NAMESPACE) -> Any:
    return cluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-o", "name", "-f", "-",
        input=json.dumps(document), check=False,
    )  # fmt: skip


def sandbox(name: str = "sbx-rules", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {"template": {"image": "busybox"}, "workspace": {"size": "1Gi"}, **spec},
    }


def session(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentSession",
        "metadata": {"name": "as-rules"},
        "spec": {
            "owner": {"user": "alice"},
            "sandboxTemplate": {"template": {"image": "busybox"}, "workspace": {"size": "1Gi"}},
            **spec,
        },
    }


def model(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": "md-rules"},
        "spec": {"model": {"uri": "hf://org/model"}, "engine": {"type": "vllm"}, **spec},
    }


def template(**fields: Any) -> dict[str, Any]:
    return {"image": "busybox", **fields}


RUNC = {"runtimeClassName": "runc"}
# (id, object, namespace, the field the message must name, words of that rule's own message)
WEBHOOK_RULES: list[tuple[str, dict[str, Any], str, str, str]] = [
    (
        "runtime-not-offered",
        sandbox(runtimeClassName="gvisor"),
        NAMESPACE,
        "spec.runtimeClassName",
        "is not offered by this cluster",
    ),
    (
        "runtime-class-missing",
        sandbox(runtimeClassName=MISSING_RC),
        NAMESPACE,
        "spec.runtimeClassName",
        "does not exist in the cluster",
    ),
    (
        "runtime-not-allowed-here",
        sandbox(runtimeClassName="kata-qemu-nvidia-gpu"),
        NAMESPACE,
        "spec.runtimeClassName",
        "is not allowed in namespace",
    ),
    (
        "sandbox-count",
        sandbox(),
        FULL,
        "metadata.namespace",
        "already has 0 Sandboxes (limit 0)",
    ),
    (
        "gpu-mode-not-offered",
        sandbox(gpu={"mode": "hami", "memory": "8Gi"}, **RUNC),
        NAMESPACE,
        "spec.gpu.mode",
        "GPU slice mode 'hami' is not offered",
    ),
    (
        "mig-profile-not-offered",
        sandbox(gpu={"mode": "mig", "profile": "7g.80gb"}, **RUNC),
        NAMESPACE,
        "spec.gpu.profile",
        "no node offers MIG profile '7g.80gb'; the nodes offer ['1g.10gb', '3g.40gb']",
    ),
    (
        "gpu-count-over-limit",
        sandbox(gpu={"mode": "wholeGPU", "count": 5}, **RUNC),
        NAMESPACE,
        "spec.gpu.count",
        "exceeds the limit of 4 GPUs per object",
    ),
    (
        "non-root-off",
        sandbox(template=template(securityContext={"runAsNonRoot": False})),
        NAMESPACE,
        "spec.template.securityContext.runAsNonRoot",
        "must not be false",
    ),
    (
        "root-user",
        sandbox(template=template(securityContext={"runAsUser": 0})),
        NAMESPACE,
        "spec.template.securityContext.runAsUser",
        "must not be 0 (root)",
    ),
    (
        "memory-in-kata",
        sandbox(runtimeClassName="kata", hibernation="memory"),
        NAMESPACE,
        "spec.hibernation",
        "needs a VM-snapshot driver",
    ),
    (
        "memory-with-gpu",
        sandbox(gpu={"mode": "wholeGPU"}, hibernation="memory", **RUNC),
        NAMESPACE,
        "spec.hibernation",
        "with a GPU (mode wholeGPU) cannot work",
    ),
    (
        "workspace-over-limit",
        sandbox(workspace={"size": "10Gi"}),
        NAMESPACE,
        "spec.workspace.size",
        "exceeds the limit of 5Gi",
    ),
    (
        "session-memory-in-kata",
        session(hibernation="memory"),
        NAMESPACE,
        "spec.hibernation",
        "needs a VM-snapshot driver",
    ),
    (
        "session-template-runtime",
        session(sandboxTemplate={"template": {"image": "b"}, "runtimeClassName": "gvisor"}),
        NAMESPACE,
        "spec.sandboxTemplate.runtimeClassName",
        "is not offered by this cluster",
    ),
    (
        "session-count",
        session(),
        FULL,
        "metadata.namespace",
        "already has 0 AgentSessions (limit 0)",
    ),
    (
        "model-runtime-not-offered",
        model(runtimeClassName="gvisor"),
        NAMESPACE,
        "spec.runtimeClassName",
        "is not offered by this cluster",
    ),
    (
        "model-mig-profile",
        model(gpu={"mode": "mig", "profile": "7g.80gb"}, **RUNC),
        NAMESPACE,
        "spec.gpu.profile",
        "no node offers MIG profile '7g.80gb'; the nodes offer ['1g.10gb', '3g.40gb']",
    ),
    (
        "model-source-not-readable",
        model(model={"uri": "oci://registry.example/m:1"}),
        NAMESPACE,
        "spec.model.uri",
        "oci:// sources cannot be read in this cluster",
    ),
    (
        "model-max-replicas",
        model(scaling={"maxReplicas": 5}),
        NAMESPACE,
        "spec.scaling.maxReplicas",
        "5 exceeds the limit of 4 replicas per ModelDeployment",
    ),
    (
        "model-gpus-at-full-scale",
        model(scaling={"maxReplicas": 3}, gpu={"mode": "wholeGPU", "count": 4}, **RUNC),
        NAMESPACE,
        "spec.scaling.maxReplicas",
        "hold up to 12 GPUs, above the limit of 8 per ModelDeployment",
    ),
    (
        "model-checkpoint-in-kata",
        model(engine={"type": "llamacpp"}, runtimeClassName="kata", wakeStrategy="checkpoint"),
        NAMESPACE,
        "spec.wakeStrategy",
        "waking llamacpp from a checkpoint inside runtime class 'kata' needs a VM-snapshot",
    ),
    (
        "model-checkpoint-mig",
        model(gpu={"mode": "mig", "profile": "1g.10gb"}, wakeStrategy="checkpoint", **RUNC),
        NAMESPACE,
        "spec.wakeStrategy",
        "waking vllm from a checkpoint with a GPU (mode mig) cannot work",
    ),
]


@pytest.mark.parametrize(
    ("document", "namespace", "field", "words"),
    [pytest.param(d, ns, f, w, id=name) for name, d, ns, f, w in WEBHOOK_RULES],
)
def test_each_rule_answers_with_its_own_message_naming_the_field(
    served: tuple[Any, Holder], document: dict[str, Any], namespace: str, field: str, words: str
) -> None:
    cluster, _ = served
    result = create(cluster, document, namespace)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert DENIED in result.stderr, result.stderr
    assert f"{field}: " in result.stderr, result.stderr
    assert words in result.stderr, result.stderr
    assert "LogRecord" not in result.stderr, result.stderr


def test_a_valid_object_passes(served: tuple[Any, Holder]) -> None:
    cluster, _ = served
    mig = {"mode": "mig", "profile": "1g.10gb"}
    for document in (sandbox(**RUNC), session(), model(gpu=mig, **RUNC)):
        result = create(cluster, document)
        assert result.returncode == 0, result.stderr


def test_an_env_value_of_megabytes_gets_the_schema_answer_naming_it(
    served: tuple[Any, Holder],
) -> None:
    cluster, _ = served
    env = [{"name": "SMALL", "value": "x"}, {"name": "HUGE", "value": "x" * (2 * 1024 * 1024)}]
    result = create(cluster, sandbox(template=template(env=env)))
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert "spec.template.env[1].value" in result.stderr, result.stderr[:2000]
    assert "Too long" in result.stderr, result.stderr[:2000]
    for failure in ("failed calling webhook", "InternalError", "Internal error"):
        assert failure not in result.stderr, result.stderr[:2000]


def _runtime_class_exists(cluster: Any, name: str, exists: bool) -> bool:
    """Whether the webhooks see the RuntimeClass as existing (or gone), from their answers."""
    answer = create(cluster, sandbox(name="probe", runtimeClassName=name))
    return ("does not exist in the cluster" in answer.stderr) != exists


def test_updates_are_judged_only_on_what_they_change(served: tuple[Any, Holder]) -> None:
    cluster, holder = served
    runtime_class = {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": GONE_RC},
        "handler": "runc",
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(runtime_class))
    wait_until("the RuntimeClass to be seen", lambda: _runtime_class_exists(cluster, GONE_RC, True))
    document = sandbox("sbx-update", runtimeClassName=GONE_RC, workspace={"size": "2Gi"})
    document["metadata"]["finalizers"] = ["kocoon.io/test-hold"]
    kubectl = cluster.kubectl
    ns = ("-n", NAMESPACE)
    kubectl("apply", "--server-side", *ns, "-f", "-", input=json.dumps(document))
    try:
        # Since it was admitted: the configuration lowered the workspace limit below its size,
        # and its RuntimeClass was deleted. Both are now refused on create.
        holder.config = LOWERED
        kubectl("delete", "runtimeclass", GONE_RC)
        wait_until(
            "the RuntimeClass to be gone", lambda: _runtime_class_exists(cluster, GONE_RC, False)
        )
        refused = create(
            cluster, sandbox("again", runtimeClassName=GONE_RC, workspace={"size": "2Gi"})
        )
        assert "spec.workspace.size" in refused.stderr, refused.stderr
        assert "does not exist in the cluster" in refused.stderr, refused.stderr

        # Metadata, status, an unchanged apply and an unrelated spec change all pass.
        for args in (
            ("label", "sandbox", "sbx-update", "team=a"),
            ("annotate", "sandbox", "sbx-update", "note=kept"),
            ("patch", "sandbox", "sbx-update", "--subresource=status", "--type=merge", "-p",
             json.dumps({"status": {"phase": "Running"}})),
            ("patch", "sandbox", "sbx-update", "--type=merge", "-p",
             json.dumps({"spec": {"template": {"image": "busybox:1.37"}}})),
        ):  # fmt: skip
            result = kubectl(*args, *ns, check=False)
            assert result.returncode == 0, result.stderr
        applied = {**document, "spec": {**document["spec"], "template": {"image": "busybox:1.37"}}}
        result = kubectl(
            "apply", "--server-side", *ns, "-f", "-", input=json.dumps(applied), check=False
        )
        assert result.returncode == 0, result.stderr

        # What the update changes is judged, with the rule's own message.
        grown = json.dumps({"spec": {"workspace": {"size": "3Gi"}}})
        result = kubectl(
            "patch", "sandbox", "sbx-update", "--type=merge", "-p", grown, *ns, check=False
        )
        assert result.returncode != 0, "a workspace above the new limit was accepted"
        assert DENIED in result.stderr, result.stderr
        assert "spec.workspace.size: 3Gi exceeds the limit of 1Gi" in result.stderr, result.stderr
        assert "does not exist" not in result.stderr, result.stderr

        # Deletion: the finalizer's removal is an update the webhooks must let through.
        kubectl("delete", "sandbox", "sbx-update", *ns, "--wait=false")
        release = json.dumps([{"op": "remove", "path": "/metadata/finalizers"}])
        result = kubectl(
            "patch", "sandbox", "sbx-update", "--type=json", "-p", release, *ns, check=False
        )
        assert result.returncode == 0, result.stderr
        wait_until(
            "the Sandbox to be gone",
            lambda: kubectl("get", "sandbox", "sbx-update", *ns, check=False).returncode != 0,
        )
    finally:
        holder.config = BASE
        kubectl(
            "patch", "sandbox", "sbx-update", *ns, "--type=merge",
            "-p", '{"metadata":{"finalizers":null}}', check=False,
        )  # fmt: skip
        kubectl(
            "delete",
            "sandbox",
            "sbx-update",
            *ns,
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )
