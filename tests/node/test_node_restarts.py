"""Memory hibernation on the real node survives an operator killed at every step.

One Sandbox goes through a hibernation and a wake while operators keep dying: each is armed
with the next failpoint of the cycle, in the order the steps happen, so every step's effect is
in the cluster while the status write after it is not. A last healthy operator must converge:
never a second pod, one restore (the counter continues by exactly one), no checkpoint left.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from sandboxkit import (
    NAME,
    Stack,
    answer,
    request,
    restored_containers,
    sandbox_manifest,
    stored_checkpoints,
    wait_for,
)
from tests.conftest import start_operator, stop_operator

pytestmark = pytest.mark.node

HIBERNATE = (
    "before-status:Hibernating",
    "after:Checkpoint",
    "after:DeletePod",
    "before-status:Hibernated",
)
WAKE = (
    "before-status:Waking",
    "after:CreatePod",
    "restore:before-mark",
    "restore:before-release",
    "after:Restore",
    "before-status:Running",
)


def pods(running: Stack) -> int:
    return len(running.kubectl("get", "pods", "-o", "name").split())


def die_at(running: Stack, directory: Path, failpoint: str, agent_env: dict[str, str]) -> None:
    """Run an operator armed with `failpoint` until it dies there."""
    failing = start_operator(
        running.cluster, directory, env={**agent_env, "KOCOON_FAILPOINTS": failpoint}
    )
    try:
        failing.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the operator never reached {failpoint}:\n{failing.output()[-3000:]}")
    finally:
        stop_operator(failing)
    assert failing.process.returncode == 137, failing.output()[-3000:]
    assert pods(running) <= 1, f"a second pod after {failpoint}"


def test_operator_killed_at_every_step_of_hibernate_and_wake_converges(
    running_stack: Stack, tmp_path: Path
) -> None:
    running = running_stack
    # The fixture's operator runs meanwhile; it must not: every step here is a dying one.
    agent_env = running.operator_env
    stop_operator(running.operator)
    healthy = start_operator(running.cluster, tmp_path, env=agent_env)
    running.cluster.apply(sandbox_manifest(running.namespace))
    wait_for("Running", lambda: running.phase() == "Running")
    secret = json.loads(running.kubectl("get", "secret", f"{NAME}-token", "-o", "json"))
    token = base64.b64decode(secret["data"]["token"]).decode()
    url = f"{running.router}/sandboxes/{running.namespace}/{NAME}/"
    before = wait_for("an answer", lambda: answer(url, token))
    stop_operator(healthy)

    running.kubectl(
        "patch", "sandbox", NAME, "--type=merge", "-p", '{"spec":{"operatingMode":"Hibernated"}}'
    )
    for failpoint in HIBERNATE:
        die_at(running, tmp_path, failpoint, agent_env)
    survivor = start_operator(running.cluster, tmp_path, env=agent_env)
    try:
        wait_for("Hibernated", lambda: running.phase() == "Hibernated")
        assert pods(running) == 0
        checkpoint = running.sandbox()["status"]["checkpoint"]
        assert stored_checkpoints(running.agent_state) == [checkpoint["id"]]
    finally:
        stop_operator(survivor)

    running.kubectl(
        "patch", "sandbox", NAME, "--type=merge", "-p", '{"spec":{"operatingMode":"Auto"}}'
    )
    running.kubectl(
        "annotate",
        "lease",
        f"kocoon-activity-sandbox-{NAME}",
        "kocoon.io/wake-requested-at=2026-01-01T00:00:00.000000Z",
        "--overwrite",
    )
    for failpoint in WAKE:
        die_at(running, tmp_path, failpoint, agent_env)
    survivor = start_operator(running.cluster, tmp_path, env=agent_env)
    try:
        wait_for("Running", lambda: running.phase() == "Running")
        after = request(url, token)
        assert after["token"] == before["token"], "woke cold: the memory was lost"
        assert after["count"] == before["count"] + 1
        assert pods(running) == 1
        assert "checkpoint" not in running.sandbox()["status"]
        assert stored_checkpoints(running.agent_state) == []
        assert len(restored_containers(running.restored_root)) == 1
    finally:
        running.kubectl("delete", "sandbox", NAME, "--timeout=60s", check=False)
        stop_operator(survivor)
