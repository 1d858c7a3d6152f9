"""The API against a real API server: CRDs install, examples are accepted, bad inputs are
rejected (schema, CEL or webhook) with a message naming the field, defaults are applied."""

from __future__ import annotations

import copy
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_strategies import MODEL_SPECS, SANDBOX_SPECS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kocoon.api import API_VERSION
from kocoon.api.model import ModelDeploymentSpec
from kocoon.api.sandbox import SandboxSpec
from kocoon.config import OperatorConfig, load_config
from kocoon.devcluster import realnode
from kocoon.webhooks import admission as decisions
from kocoon.webhooks.manifests import registered, webhook_entries
from kocoon.webhooks.run import serve_admission
from kocoon.webhooks.server import WebhookServing

# The operator's configuration in the dev cluster: the defaults, and the real node's
# RuntimeClass offered (with memory checkpoints), as `make dev` starts it.
DEV_CONFIG = load_config(environ=realnode.operator_config_env())

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = f"kocoon-test-{os.getpid()}.kocoon.io"
NAMESPACE = f"kocoon-api-{os.getpid()}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def kube(cluster: Any) -> Iterator[Any]:
    """The cluster with the CRDs installed and a namespace for this module."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/sandboxes.kocoon.io", "crd/agentsessions.kocoon.io", "crd/modeldeployments.kocoon.io",
    )  # fmt: skip
    cluster.kubectl("create", "namespace", NAMESPACE)
    yield cluster
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.fixture(scope="module")
def admission(kube: Any) -> Iterator[Any]:
    """The admission webhooks, served from this process over TLS on loopback."""
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kube.kubeconfig)
    # The dev cluster's RuntimeClass for the real node, which the CPU model example names.
    kube.kubectl("apply", "-f", "-", input=json.dumps(realnode.runtime_class()))
    stop = threading.Event()
    serving = WebhookServing(addr="127.0.0.1", port=_free_port(), host="127.0.0.1")
    errors: list[BaseException] = []

    def run() -> None:
        import asyncio

        try:
            asyncio.run(
                serve_admission(
                    DEV_CONFIG, serving, configuration_name=CONFIGURATION, stop_flag=stop
                )
            )
        except BaseException as error:  # reported by the fixture, not lost in the thread
            errors.append(error)

    thread = threading.Thread(target=run, name="kocoon-admission", daemon=True)
    thread.start()
    try:
        _wait_for_webhook(kube, errors)
        yield kube
    finally:
        stop.set()
        thread.join(timeout=30)
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            kube.kubectl("delete", kind, CONFIGURATION, "--ignore-not-found", check=False)
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous


def _wait_for_webhook(kube: Any, errors: list[BaseException], timeout: float = 90) -> None:
    probe = sandbox(runtimeClassName="not-offered")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if errors:
            raise RuntimeError(f"the admission server failed: {errors[0]!r}") from errors[0]
        result = server_create(kube, probe)
        if "is not offered by this cluster" in result.stderr:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the admission webhook did not answer within {timeout}s")


def server_create(kube: Any, document: dict[str, Any], verb: str = "create") -> Any:
    return kube.kubectl(
        verb, "--dry-run=server", "-n", NAMESPACE, "-o", "name", "-f", "-",
        input=json.dumps(document), check=False,
    )  # fmt: skip


def _set(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `document` with `path` (dots; `[n]` for list items) set, or deleted for ...."""
    result = copy.deepcopy(document)
    parts = path.replace("[", ".[").split(".")
    node: Any = result
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    last = parts[-1]
    key: Any = int(last[1:-1]) if last.startswith("[") else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return result


def sandbox(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Sandbox",
        "metadata": {"name": "sbx-under-test"},
        "spec": {
            "template": {"image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]},
            "workspace": {"size": "1Gi"},
            **spec,
        },
    }


def session(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentSession",
        "metadata": {"name": "as-under-test"},
        "spec": {
            "owner": {"user": "alice", "tenant": "acme"},
            "sandboxTemplate": {"template": {"image": "busybox"}, "workspace": {"size": "1Gi"}},
            **spec,
        },
    }


def model(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": "md-under-test"},
        "spec": {"model": {"uri": "hf://org/model"}, "engine": {"type": "vllm"}, **spec},
    }


GPU_RUNC_MEMORY = {"gpu": {"mode": "wholeGPU"}, "runtimeClassName": "runc", "hibernation": "memory"}

# (id, object, text the API server's error must contain: the field's path)
BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    # Sandbox: schema
    ("sbx-missing-image", _set(sandbox(), "spec.template.image", ...), "spec.template.image"),
    ("sbx-wrong-type-idle", sandbox(idleTimeout=10), "spec.idleTimeout"),
    ("sbx-unknown-field", sandbox(privileged=True), "spec.privileged"),
    ("sbx-unknown-nested", _set(sandbox(), "spec.template.hostPID", True), "spec.template.hostPID"),
    ("sbx-negative-size", sandbox(workspace={"size": "-1Gi"}), "spec.workspace.size"),
    ("sbx-zero-size", sandbox(workspace={"size": "0"}), "spec.workspace.size"),
    ("sbx-bad-quantity", sandbox(workspace={"size": "10GB"}), "spec.workspace.size"),
    ("sbx-bad-duration", sandbox(idleTimeout="10 minutes"), "spec.idleTimeout"),
    ("sbx-zero-duration", sandbox(idleTimeout="0s"), "spec.idleTimeout"),
    ("sbx-huge-duration", sandbox(idleTimeout="9000h"), "spec.idleTimeout"),
    ("sbx-bad-runtime-name", sandbox(runtimeClassName="Kata_VM"), "spec.runtimeClassName"),
    ("sbx-bad-mode", sandbox(operatingMode="Suspended"), "spec.operatingMode"),
    ("sbx-mig-no-profile", sandbox(gpu={"mode": "mig"}), "spec.gpu.profile"),
    ("sbx-gpu-zero", sandbox(gpu={"mode": "wholeGPU", "count": 0}), "spec.gpu.count"),
    ("sbx-gpu-bad-mode", sandbox(gpu={"mode": "mps"}), "spec.gpu.mode"),
    ("sbx-hami-no-memory", sandbox(gpu={"mode": "hami", "cores": 50}), "spec.gpu.memory"),
    (
        "sbx-port-range",
        _set(sandbox(), "spec.template.ports[0].containerPort", 70000),
        "spec.template.ports[0].containerPort",
    ),
    (
        "sbx-exposed-unknown",
        sandbox(network={"exposedPorts": ["grpc"]}),
        "spec.network.exposedPorts",
    ),
    (
        "sbx-egress-both",
        sandbox(network={"egress": {"allow": [{"cidr": "10.0.0.0/8", "host": "example.com"}]}}),
        "spec.network.egress.allow[0]",
    ),
    (
        "sbx-egress-bad-cidr",
        sandbox(network={"egress": {"allow": [{"cidr": "10.0.0.300/8"}]}}),
        "spec.network.egress.allow[0].cidr",
    ),
    (
        "sbx-filesystem-no-workspace",
        _set(sandbox(hibernation="filesystem"), "spec.workspace", ...),
        "spec.hibernation",
    ),
    ("sbx-bad-shutdown-time", sandbox(shutdownTime="tomorrow"), "spec.shutdownTime"),
    (
        "sbx-env-two-sources",
        _set(
            sandbox(),
            "spec.template.env",
            [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        ),
        "spec.template.env[0]",
    ),
    (
        "sbx-negative-memory",
        _set(sandbox(), "spec.template.resources", {"limits": {"memory": "-512Mi"}}),
        "spec.template.resources.limits.memory",
    ),
    (
        "sbx-too-many-args",
        _set(sandbox(), "spec.template.command", ["x"] * 65),
        "spec.template.command",
    ),
    (
        "sbx-oversized-image",
        _set(sandbox(), "spec.template.image", "a" * 600),
        "spec.template.image",
    ),
    ("sbx-invalid-name", _set(sandbox(), "metadata.name", "Bad_Name"), "metadata.name"),
    # Sandbox: webhook
    ("sbx-runtime-not-offered", sandbox(runtimeClassName="gvisor"), "spec.runtimeClassName"),
    ("sbx-memory-with-gpu", sandbox(**GPU_RUNC_MEMORY), "spec.hibernation"),
    (
        "sbx-memory-in-kata",
        sandbox(runtimeClassName="kata", hibernation="memory"),
        "spec.hibernation",
    ),
    ("sbx-gpu-mode-not-offered", sandbox(gpu={"mode": "hami", "memory": "8Gi"}), "spec.gpu.mode"),
    (
        "sbx-root-user",
        _set(sandbox(), "spec.template.securityContext", {"runAsUser": 0}),
        "spec.template.securityContext.runAsUser",
    ),
    # AgentSession
    ("as-missing-owner", _set(session(), "spec.owner", ...), "spec.owner"),
    ("as-empty-user", _set(session(), "spec.owner.user", ""), "spec.owner.user"),
    ("as-idle-beyond-life", session(idleTimeout="2h", maxLifetime="1h"), "spec.idleTimeout"),
    (
        "as-tool-two-locations",
        session(
            tools=[
                {"name": "t", "url": "https://x.example", "serviceRef": {"name": "s", "port": 80}}
            ]
        ),
        "spec.tools[0]",
    ),
    (
        "as-tool-bad-url",
        session(tools=[{"name": "t", "url": "ftp://x.example"}]),
        "spec.tools[0].url",
    ),
    ("as-duplicate-model", session(models=[{"name": "m"}, {"name": "m"}]), "spec.models[1]"),
    ("as-negative-retention", session(retention="-1h"), "spec.retention"),
    ("as-memory-in-kata", session(hibernation="memory"), "spec.hibernation"),
    ("as-unknown-field", session(owner={"user": "alice", "team": "x"}), "spec.owner.team"),
    # ModelDeployment
    ("md-bad-uri", model(model={"uri": "http://example.com/m"}), "spec.model.uri"),
    ("md-bad-engine", model(engine={"type": "ollama"}), "spec.engine.type"),
    ("md-negative-min", model(scaling={"minReplicas": -1}), "spec.scaling.minReplicas"),
    (
        "md-min-above-max",
        model(scaling={"minReplicas": 3, "maxReplicas": 2}),
        "spec.scaling.minReplicas",
    ),
    ("md-replicas-above-max", model(replicas=5), "spec.replicas"),
    ("md-bad-delay", model(scaling={"scaleDownDelay": "5 minutes"}), "spec.scaling.scaleDownDelay"),
    ("md-zero-cache", model(cache={"size": "0"}), "spec.cache.size"),
    (
        "md-sleep-trtllm",
        model(engine={"type": "trtllm"}, wakeStrategy="engineSleep"),
        "spec.wakeStrategy",
    ),
    ("md-zero-max", model(scaling={"maxReplicas": 0}), "spec.scaling.maxReplicas"),
    ("md-gs-uri", model(model={"uri": "gs://bucket/m"}), "spec.model.uri"),
    ("md-bad-pvc-uri", model(model={"uri": "pvc://Not_A_Claim/m"}), "spec.model.uri"),
    ("md-bad-hf-uri", model(model={"uri": "hf://just-a-name"}), "spec.model.uri"),
    ("md-s3-without-endpoint", model(model={"uri": "s3://bucket/key"}), "spec.model.s3"),
    (
        "md-s3-bad-endpoint",
        model(
            model={
                "uri": "s3://bucket/key",
                "s3": {"endpoint": "ftp://s3", "credentialsSecretRef": {"name": "c"}},
            }
        ),
        "spec.model.s3.endpoint",
    ),
    (
        "md-revision-on-pvc",
        model(model={"uri": "pvc://c/p", "revision": "main"}),
        "spec.model.revision",
    ),
    (
        "md-path-escapes",
        model(model={"uri": "oci://img:1", "path": "a/../../etc"}),
        "spec.model.path",
    ),
    (
        "md-checkpoint-mig",
        model(gpu={"mode": "mig", "profile": "1g.10gb"}, wakeStrategy="checkpoint"),
        "spec.wakeStrategy",
    ),
]


@pytest.mark.parametrize(
    ("document", "field"),
    [pytest.param(document, field, id=name) for name, document, field in BAD_INPUTS],
)
def test_bad_input_is_rejected_naming_the_field(
    admission: Any, document: dict[str, Any], field: str
) -> None:
    result = server_create(admission, document)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert field in result.stderr, result.stderr


def test_the_table_is_large_and_covers_every_kind() -> None:
    assert len(BAD_INPUTS) >= 40
    assert {document["kind"] for _, document, _ in BAD_INPUTS} == {
        "Sandbox", "AgentSession", "ModelDeployment",
    }  # fmt: skip


IMMUTABLE_CHANGES: list[tuple[str, dict[str, Any], str, Any, str]] = [
    ("runtime-class", sandbox(runtimeClassName="runc"), "spec.runtimeClassName", "kata",
     "spec.runtimeClassName"),
    ("storage-class", sandbox(workspace={"size": "1Gi", "storageClassName": "fast"}),
     "spec.workspace.storageClassName", "slow", "spec.workspace.storageClassName"),
    ("workspace-shrink", sandbox(workspace={"size": "2Gi"}), "spec.workspace.size", "1Gi",
     "spec.workspace.size"),
    ("mount-path", sandbox(), "spec.workspace.mountPath", "/data", "spec.workspace.mountPath"),
    ("gpu-mode", sandbox(gpu={"mode": "wholeGPU"}, hibernation="filesystem"), "spec.gpu",
     {"mode": "timeSliced"}, "spec.gpu.mode"),
    ("owner-user", session(), "spec.owner.user", "bob", "spec.owner.user"),
    ("owner-tenant", session(), "spec.owner.tenant", "other", "spec.owner.tenant"),
    ("model-uri", model(), "spec.model.uri", "hf://org/other", "spec.model.uri"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("original", "path", "value", "field"),
    [pytest.param(o, p, v, f, id=name) for name, o, p, v, f in IMMUTABLE_CHANGES],
)
def test_immutable_field_cannot_change(
    admission: Any, original: dict[str, Any], path: str, value: Any, field: str
) -> None:
    name = f"immutable-{abs(hash((path, json.dumps(value)))) % 10**8}"
    created = _set(original, "metadata.name", name)
    admission.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(created))
    try:
        result = server_create(admission, _set(created, path, value), verb="replace")
        assert result.returncode != 0, f"accepted: {result.stdout}"
        assert field in result.stderr, result.stderr
        assert "immutable" in result.stderr or "shrink" in result.stderr, result.stderr
    finally:
        admission.kubectl("delete", "-n", NAMESPACE, "-f", "-", input=json.dumps(created))


def test_examples_are_accepted(admission: Any) -> None:
    result = admission.kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples"))
    assert result.stdout.count("created") + result.stdout.count("configured") == 5
    listed = admission.kubectl("get", "kocoon", "-n", NAMESPACE, "-o", "name").stdout.split()
    assert len(listed) == 5
    admission.kubectl("delete", "-n", NAMESPACE, "-f", str(ROOT / "examples"))


def test_explain_shows_documented_fields(kube: Any) -> None:
    text = kube.kubectl("explain", "sandbox.spec").stdout
    for field in ("runtimeClassName", "hibernation", "operatingMode", "idleTimeout", "workspace"):
        assert field in text
    assert "How the sandbox hibernates" in text


def test_short_names_and_printer_columns(admission: Any) -> None:
    document = _set(sandbox(runtimeClassName="runc"), "metadata.name", "columns")
    admission.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(document))
    try:
        header = admission.kubectl("get", "sbx", "-n", NAMESPACE).stdout.splitlines()[0]
        for column in ("PHASE", "READY", "NODE", "IDLE FOR", "GPU", "AGE"):
            assert column in header
    finally:
        admission.kubectl("delete", "sbx", "columns", "-n", NAMESPACE)


def _created(admission: Any, document: dict[str, Any]) -> dict[str, Any]:
    admission.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(document))
    kind, name = document["kind"], document["metadata"]["name"]
    try:
        text = admission.kubectl("get", kind.lower(), name, "-n", NAMESPACE, "-o", "yaml").stdout
        result: dict[str, Any] = yaml.safe_load(text)
        return result
    finally:
        admission.kubectl("delete", kind.lower(), name, "-n", NAMESPACE)


def test_mutation_applies_configured_defaults(admission: Any) -> None:
    spec = _created(admission, _set(sandbox(), "metadata.name", "defaults"))["spec"]
    assert spec["runtimeClassName"] == "kata"  # OperatorConfig.default_runtime_class
    assert spec["hibernation"] == "filesystem"  # kata cannot checkpoint memory; has a workspace
    assert spec["template"]["securityContext"]["runAsNonRoot"] is True
    assert spec["operatingMode"] == "Auto"  # a schema default
    assert spec["network"]["egress"]["allowDns"] is True


def test_mutation_picks_memory_and_gpu_runtime_from_configuration(admission: Any) -> None:
    runc = _created(admission, _set(sandbox(runtimeClassName="runc"), "metadata.name", "runc"))
    assert runc["spec"]["hibernation"] == "memory"
    gpu = _created(admission, _set(sandbox(gpu={"mode": "wholeGPU"}), "metadata.name", "gpu"))
    assert gpu["spec"]["runtimeClassName"] == "kata-qemu-nvidia-gpu"
    assert gpu["spec"]["hibernation"] == "filesystem"


@pytest.mark.parametrize(
    "spec",
    [
        {"engine": {"type": "llamacpp"}, "wakeStrategy": "engineSleep"},
        {"engine": {"type": "sglang"}, "wakeStrategy": "engineSleep"},
        {"engine": {"type": "llamacpp"}, "wakeStrategy": "checkpoint", "runtimeClassName": "runc"},
        {"model": {"uri": "s3://bucket/models/", "s3": {
            "endpoint": "http://s3.storage:9000", "credentialsSecretRef": {"name": "c"}}}},
        {"model": {"uri": "oci://kocoon.local/smollm2:local", "path": "models/m.gguf"}},
        {"model": {"uri": "pvc://weights/llama"}},
    ],
    ids=["sleep-llamacpp", "sleep-sglang", "checkpoint-llamacpp", "s3", "oci", "pvc"],
)  # fmt: skip
def test_model_combinations_that_work_are_accepted(admission: Any, spec: dict[str, Any]) -> None:
    result = server_create(admission, model(**spec))
    assert result.returncode == 0, result.stderr


def test_mutation_of_session_template_and_model(admission: Any) -> None:
    created = _created(admission, session())
    assert created["spec"]["sandboxTemplate"]["runtimeClassName"] == "kata"
    deployment = _created(admission, model(gpu={"mode": "mig", "profile": "1g.10gb"}))
    assert deployment["spec"]["runtimeClassName"] == "kata-qemu-nvidia-gpu"
    assert deployment["spec"]["scaling"] == {
        "minReplicas": 0, "maxReplicas": 1, "targetConcurrency": 8, "scaleDownDelay": "5m",
    }  # fmt: skip


def _kind_document(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": "fuzz"}, "spec": spec}


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch, as the API server applies the webhook's defaults."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        merged[key] = _merge_patch(merged.get(key), value)
    return merged


def _locally_valid(kind: str, spec: dict[str, Any]) -> bool:
    """Whether the models and the admission decisions accept `spec` (the webhook's view)."""
    model, validate, defaults = {
        "Sandbox": (SandboxSpec, decisions.validate_sandbox, decisions.sandbox_spec_defaults),
        "ModelDeployment": (
            ModelDeploymentSpec, decisions.validate_model, decisions.model_spec_defaults,
        ),
    }[kind]  # fmt: skip
    defaulted = _merge_patch(spec, defaults(spec, None, OperatorConfig()))
    try:
        parsed = model.model_validate(defaulted)
    except ValidationError:
        return False
    facts = decisions.ClusterFacts(namespace=NAMESPACE, creating=True)
    return not validate(parsed, OperatorConfig(), facts)  # type: ignore[arg-type]


@given(
    st.one_of(
        st.tuples(st.just("Sandbox"), SANDBOX_SPECS),
        st.tuples(st.just("ModelDeployment"), MODEL_SPECS),
    )
)
@settings(
    max_examples=int(os.environ.get("KOCOON_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_random_specs_are_answered_and_agree_with_the_models(
    admission: Any, case: tuple[str, dict[str, Any]]
) -> None:
    kind, spec = case
    result = server_create(admission, _kind_document(kind, spec))
    # Every answer is an acceptance or a validation error: no internal or webhook failures.
    for failure in ("Internal error", "failed calling webhook", "InternalError", "panic"):
        assert failure not in result.stderr, result.stderr
    assert (result.returncode == 0) == _locally_valid(kind, spec), (spec, result.stderr)


def test_unavailable_webhook_fails_closed_and_says_so(admission: Any) -> None:
    name = f"kocoon-unavailable-{os.getpid()}.kocoon.io"
    entries = webhook_entries("validating", registered())
    for entry in entries:
        entry["name"] = entry["name"].replace("kocoon.io", name)
        entry["clientConfig"] = {"url": f"https://127.0.0.1:{_free_port()}/closed"}
        entry["timeoutSeconds"] = 5
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": entries,
    }
    admission.kubectl("apply", "-f", "-", input=json.dumps(configuration))
    try:
        deadline = time.monotonic() + 30
        while True:  # the API server picks up new configurations within a second or so
            result = server_create(admission, sandbox(runtimeClassName="runc"))
            if result.returncode != 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert result.returncode != 0, "created although the webhook is unavailable"
        assert "failed calling webhook" in result.stderr
        assert f"validate-sandbox.{name}" in result.stderr
    finally:
        admission.kubectl("delete", "validatingwebhookconfiguration", name)
