"""The whole stack once: an operator process (with the chart's RBAC) makes a pod for a
Sandbox, the scheduler places it on a kwok node, kwok runs it, the operator writes status,
and deleting the Sandbox garbage-collects the pod."""

from __future__ import annotations

import json

import pytest

from kocoon.devcluster import Cluster
from tests.conftest import OperatorProcess
from tests.controllers.helpers import get, new_namespace, sandbox_manifest, wait_for

pytestmark = pytest.mark.integration


def test_sandbox_becomes_a_running_pod_and_is_collected(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "smoke")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(sandbox_manifest("hello", namespace)))

    sandbox = wait_for(
        "the Sandbox to be Running",
        lambda: (
            (s := get(cluster, "sandbox", namespace, "hello"))
            and s.get("status", {}).get("phase") == "Running"
            and s
        ),
    )
    pod = get(cluster, "pod", namespace, "hello")
    assert pod is not None
    assert pod["spec"]["nodeName"] == sandbox["status"]["nodeName"]
    node = get(cluster, "node", "", pod["spec"]["nodeName"])
    assert node is not None
    assert node["metadata"]["labels"]["type"] == "kwok"
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Sandbox",
        "hello",
        sandbox["metadata"]["uid"],
    )
    assert sandbox["status"]["podIP"] == pod["status"]["podIP"]
    ready = {c["type"]: c for c in sandbox["status"]["conditions"]}["Ready"]
    assert ready["status"] == "True"
    assert ready["observedGeneration"] == sandbox["metadata"]["generation"]
    # Hardened as documented.
    assert pod["spec"]["automountServiceAccountToken"] is False
    container = pod["spec"]["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]

    cluster.kubectl("delete", "sandbox", "hello", "-n", namespace, "--wait=false")
    wait_for("the Sandbox to be gone", lambda: get(cluster, "sandbox", namespace, "hello") is None)
    wait_for("the pod to be collected", lambda: get(cluster, "pod", namespace, "hello") is None)
    assert "Traceback" not in operator.output()
