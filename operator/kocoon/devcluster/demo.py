"""`make dev`: the local cluster with Kocoon running on it, and a session taken through its life.

An AgentSession is created (it makes its Sandbox, token and route); a request through the
router reaches it; it goes idle and hibernates; the next request through the router wakes it
and is answered. Where this machine can be a real node (root, `make node-setup`), the session
runs there for real and hibernates with its memory: the answer after the wake continues the
count of the process that went to sleep. Elsewhere it runs on simulated nodes and hibernates
to its workspace. Then, on the real node, a ModelDeployment (llama.cpp on CPU) is taken from
zero to an answer streamed through the router's OpenAI endpoint, to zero when idle, and woken
again (`demo_model.py`). The cluster, operator, router and agent keep running afterwards
(`make dev-down` stops them all). KOCOON_DEV_REAL_NODE=0 keeps to the simulated nodes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from kocoon.devcluster import binaries, demo_model, realnode, stack
from kocoon.devcluster import cluster as cluster_module
from kocoon.devcluster.console import step, wait

NAMESPACE = "demo"
NAME = "hello"
IDLE_TIMEOUT = "15s"


def real_node_problem() -> str | None:
    """Why this machine cannot be the demo's real node; None when it can."""
    if os.environ.get("KOCOON_DEV_REAL_NODE") == "0":
        return "KOCOON_DEV_REAL_NODE=0"
    try:
        realnode.preflight()
    except (binaries.MissingBinaryError, realnode.RealNodeError) as error:
        return str(error)
    return None


def session_manifest(real: bool, as_root: bool) -> dict[str, Any]:
    template: dict[str, Any] = {
        "image": "python:3.12-slim",
        "command": ["python", "-m", "http.server", "8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
    }
    if real:
        # The in-memory counter, from an image built on this machine.
        template = realnode.counter_sandbox_template(as_root=as_root)
    return {
        "apiVersion": "kocoon.io/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "owner": {"user": "dev@example.com"},
            "sandboxTemplate": {
                "template": template,
                "runtimeClassName": "runc",
                "workspace": {"size": "1Gi"},
                "network": {"exposedPorts": ["http"]},
            },
            "idleTimeout": IDLE_TIMEOUT,
            "hibernation": "memory" if real else "filesystem",
        },
    }


def session_sandbox(handle: cluster_module.Cluster) -> dict[str, Any]:
    out = handle.kubectl("get", "sandbox", NAME, "-n", NAMESPACE, "-o", "json", check=False)
    found: dict[str, Any] = json.loads(out.stdout) if out.returncode == 0 else {}
    return found


def request(url: str, token: str, timeout: float = 60) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read()), time.monotonic() - started
    except urllib.error.HTTPError as error:
        body = {"error": error.read().decode(errors="replace")}
        return error.code, body, time.monotonic() - started
    except urllib.error.URLError as error:  # nothing listening (yet)
        return 0, {"error": str(error.reason)}, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    problem = real_node_problem()
    real = problem is None
    # Where CRIU can only checkpoint root's processes, the session runs as root (pod hardening
    # off) so that its memory can still be checkpointed.
    as_root = real and realnode.criu_needs_root()
    step("starting the local cluster" + (" with this machine as a real node" if real else ""))
    if problem:
        print(f"    no real node ({problem}): the session runs on simulated nodes")
    handle = cluster_module.up(real_node=real)
    print(f'    API server {handle.server}  (eval "$(.venv/bin/kocoon dev env)" for kubectl)')

    step("installing the CRDs and starting the agent, operator and router")
    stack.install_crds(handle)
    agent = stack.start_agent(handle)
    operator_env = dict(agent)
    if as_root:
        print(
            "    root here lacks CAP_SYS_RESOURCE, so CRIU can only checkpoint processes running"
            " as root: the session runs as root, with pod hardening off"
        )
        operator_env["KOCOON_POD_HARDENING"] = "false"
    if real:
        # Model replicas reach the real node through its RuntimeClass (as a node pool would).
        operator_env.update(realnode.operator_config_env())
        handle.apply(realnode.runtime_class())
    stack.start_operator(handle, env=operator_env)
    _, router = stack.start_router(handle)
    if not real:
        stack.start_workloads(handle)
    print(f"    router at {router}; logs in {handle.log_path('kocoon-operator').parent}")

    mode = "memory" if real else "filesystem"
    step(
        f"creating AgentSession {NAMESPACE}/{NAME} (idleTimeout {IDLE_TIMEOUT}, {mode} hibernation)"
    )
    # A fresh start: what an earlier run left in the namespace goes first.
    handle.kubectl(
        "delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=60s", timeout=90
    )
    handle.kubectl("create", "namespace", NAMESPACE)
    # The admission webhook may take a moment to come up with the operator: retry the create.
    wait(
        "the Sandbox to be accepted",
        lambda: (
            handle.kubectl(
                "apply", "-f", "-", input=json.dumps(session_manifest(real, as_root)), check=False
            ).returncode
            == 0
        ),
    )

    def session() -> dict[str, Any]:
        out = handle.kubectl("get", "agentsession", NAME, "-n", NAMESPACE, "-o", "json")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def phase() -> str:
        return str(session().get("status", {}).get("phase"))

    wait("Running", lambda: phase() == "Running")
    sandbox = json.loads(
        handle.kubectl("get", "sandbox", NAME, "-n", NAMESPACE, "-o", "json").stdout
    )
    print(
        f"    its Sandbox runs on {sandbox['status']['nodeName']} at {sandbox['status']['podIP']}"
    )
    secret = json.loads(
        handle.kubectl("get", "secret", f"{NAME}-token", "-n", NAMESPACE, "-o", "json").stdout
    )
    token = base64.b64decode(secret["data"]["token"]).decode()
    url = f"{router}/sessions/{NAMESPACE}/{NAME}/hello"

    step(f"two requests through the router: GET {url}")
    for _ in range(2):
        status, before, seconds = wait(
            "an answer", lambda: (r := request(url, token))[0] == 200 and r
        )
        print(f"    {status} in {seconds * 1000:.0f} ms: {before}")
    print(f"    without the token: {request(url, 'wrong')[0]}")

    step(f"waiting for the session to go idle ({IDLE_TIMEOUT}) and hibernate")
    wait("Hibernated", lambda: phase() == "Hibernated", timeout=120)
    gone = handle.kubectl("get", "pod", NAME, "-n", NAMESPACE, check=False).returncode != 0
    print(f"    Hibernated; pod deleted: {gone}; workspace kept")

    checkpoint = session_sandbox(handle).get("status", {}).get("checkpoint")
    if checkpoint:
        print(f"    memory checkpoint {checkpoint['id']} on {checkpoint['node']}")
    step("a request through the router wakes it")
    status, body, seconds = request(url, token, timeout=120)
    print(f"    {status} after {seconds:.2f} s (held while waking): {body}")
    if real and status == 200 and before.get("token") == body.get("token"):
        print(f"    the same process answered: count {before['count']} → {body['count']}")
    usage = session()["status"].get("usage", {})
    print(f"    usage: {json.dumps(usage)}")
    events = handle.kubectl(
        "get",
        "events",
        "-n",
        NAMESPACE,
        "--field-selector=involvedObject.kind=Sandbox",
        "--sort-by=.lastTimestamp",
    ).stdout
    print("\n" + events)
    model_ok = True
    if real:
        model_ok = demo_model.run(handle, router, NAMESPACE)
    else:
        step("the model part needs this machine as a real node: skipped")
    print("The cluster keeps running: `make dev-down` stops it.")
    return 0 if status == 200 and model_ok else 1


if __name__ == "__main__":
    sys.exit(main())
