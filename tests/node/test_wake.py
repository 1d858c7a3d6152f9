"""Hibernate with memory and wake on the real node, without the operator and router.

The pieces the Sandbox life cycle strings together, run by hand: a counter serves requests,
the agent's kubelet driver archives its container through the kubelet checkpoint API, its pod
is deleted, a new pod is created on the real node, and the agent's runc driver restores the
archive into that pod's sandbox.
The next answer continues the count with the same start-up token: memory survived.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from nodekit import get_json, pod_sandbox, restore_bundle, run_pod

from kocoon.agent.drivers.base import Available, CheckpointTarget, RestoreTarget
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.drivers.kubelet import ARCHIVE_NAME, KubeletConfig, KubeletDriver
from kocoon.agent.drivers.runc import TARGET_BUNDLE, TARGET_CONTAINER_ID, RuncDriver
from kocoon.agent.models import SandboxRef
from kocoon.devcluster import Cluster, images, realnode

pytestmark = pytest.mark.node

RESTORED_RUNC_NAMESPACE = "kocoon-restored"


async def test_hibernate_with_memory_then_wake_into_a_new_pod(
    real_node: Cluster, tmp_path: Path
) -> None:
    node = realnode.layout(real_node.state)
    name, waker = "hibernating-counter", "woken-counter"
    before_pod = run_pod(
        real_node,
        realnode.pod_manifest(name, images.reference(images.PYTHON), port=images.COUNTER_PORT),
    )
    url = f"http://{before_pod['status']['podIP']}:{images.COUNTER_PORT}/"
    for _ in range(3):
        before = get_json(url)
    assert before["count"] == 3

    # Hibernate: the agent's kubelet driver, authenticated with a ServiceAccount token.
    endpoint = realnode.kubelet_endpoint(real_node.state)
    token = tmp_path / "token"
    token.write_text(real_node.kubectl("create", "token", "default").stdout.strip())
    kubelet = KubeletDriver(
        KubeletConfig(
            url=endpoint.url,
            token_file=token,
            ca_file=endpoint.ca_file,
            checkpoint_dir=endpoint.checkpoint_dir,
        )
    )
    assert isinstance(await kubelet.probe(), Available)
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    started = time.monotonic()
    await kubelet.checkpoint(
        CheckpointTarget(
            sandbox=SandboxRef(namespace="default", name=name), pod=name, container=name
        ),
        image_dir,
        tmp_path / "dump-work",
    )
    checkpoint_seconds = time.monotonic() - started
    real_node.kubectl("delete", "pod", name, "--grace-period=0", "--force")
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    with tarfile.open(image_dir / ARCHIVE_NAME) as tar:
        tar.extractall(checkpoint, filter="tar")

    runc_root = node.runc_root / RESTORED_RUNC_NAMESPACE
    bundle = node.directory / "restored" / name
    container_id = f"{name}-restored"
    criu_dir = realnode.criu_dir()
    assert criu_dir is not None
    driver = RuncDriver(CriuTool(criu_dir / "criu"), root=runc_root)
    try:
        began = time.monotonic()
        # The wake pod holds the namespaces; its own process only keeps the sandbox alive.
        woken = run_pod(
            real_node,
            realnode.pod_manifest(
                waker, images.reference(images.BUSYBOX), command=("sleep", "3600")
            ),
        )
        pod_ready = time.monotonic() - began
        sandbox = pod_sandbox(node, waker)
        restore_bundle(node, checkpoint, images.PYTHON, sandbox, woken["metadata"]["uid"], bundle)
        restore_began = time.monotonic()
        restored = await driver.restore(
            RestoreTarget(
                sandbox=SandboxRef(namespace="default", name=name),
                target={TARGET_CONTAINER_ID: container_id, TARGET_BUNDLE: str(bundle)},
            ),
            checkpoint / "checkpoint",
            tmp_path / "work",
        )
        restore_seconds = time.monotonic() - restore_began
        after = get_json(f"http://{woken['status']['podIP']}:{images.COUNTER_PORT}/")
        total = time.monotonic() - began
        print(
            f"checkpoint {checkpoint_seconds:.2f} s; wake: pod Ready {pod_ready:.2f} s, "
            f"restore {restore_seconds:.2f} s, first byte after {total:.2f} s ({restored.message})"
        )
        assert after["token"] == before["token"]
        assert after["count"] == before["count"] + 1
        assert after["started"] == before["started"]
    finally:
        real_node.kubectl("delete", "pod", waker, "--wait=false", check=False)
        _remove_restored(runc_root, container_id)
        shutil.rmtree(bundle, ignore_errors=True)


def _remove_restored(runc_root: Path, container_id: str) -> None:
    runc = ["runc", "--root", str(runc_root)]
    subprocess.run([*runc, "kill", container_id, "KILL"], capture_output=True, check=False)
    subprocess.run([*runc, "delete", "--force", container_id], capture_output=True, check=False)
