"""A request through the router wakes a hibernated session on the real node, memory intact.

The router is the real one (aiohttp, on loopback) with an in-memory routing table; what the
operator and agent will do on a wake is done here by a wake control: create a pod on the real
node, have the agent's runc driver restore the kubelet checkpoint into its sandbox, and point
the table at the new pod. The request is held meanwhile; its answer continues the count.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nodekit import container_rootfs, pod_sandbox, restore_bundle, run_pod
from tests.router.routerkit import NAMESPACE, Backend, RecordingSink, add_session, bearer, start_app

from kocoon.agent.drivers.base import CheckpointTarget, RestoreTarget
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.drivers.kubelet import ARCHIVE_NAME, KubeletConfig, KubeletDriver
from kocoon.agent.drivers.runc import TARGET_BUNDLE, TARGET_CONTAINER_ID, RuncDriver
from kocoon.agent.models import SandboxRef
from kocoon.devcluster import Cluster, images, realnode
from kocoon.router.main import Router, assemble
from kocoon.router.proxy import ProxyConfig
from kocoon.router.table import BackendView, RoutingTable, SessionView, TargetKey, TargetKind
from kocoon.router.wake import WakeConfig

pytestmark = pytest.mark.node

TOKEN = "node-session-token"
SESSION = "counter"
RESTORED_RUNC_NAMESPACE = "kocoon-restored"


@dataclass
class RealNodeWake:
    """The router's wake control, acting as operator and agent would on the real node."""

    cluster: Cluster
    table: RoutingTable
    checkpoint: Path
    work: Path
    pod: str = "woken-counter"
    requests: list[TargetKey] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @property
    def node(self) -> realnode.NodeLayout:
        return realnode.layout(self.cluster.state)

    @property
    def runc_root(self) -> Path:
        return self.node.runc_root / RESTORED_RUNC_NAMESPACE

    async def request_wake(self, key: TargetKey) -> None:
        self.requests.append(key)
        if self.task is None:
            self.task = asyncio.create_task(self._wake())

    async def _wake(self) -> None:
        began = time.monotonic()
        # The wake pod runs the same image, so its root filesystem is already unpacked.
        manifest = realnode.pod_manifest(
            self.pod, images.reference(images.PYTHON), command=("sleep", "infinity")
        )
        woken = await asyncio.to_thread(run_pod, self.cluster, manifest)
        self.timings["pod Ready"] = time.monotonic() - began
        sandbox = await asyncio.to_thread(pod_sandbox, self.node, self.pod)
        rootfs = await asyncio.to_thread(container_rootfs, self.node, self.pod, self.pod)
        bundle = self.node.directory / "restored" / SESSION
        await asyncio.to_thread(
            restore_bundle,
            self.node,
            self.checkpoint,
            images.PYTHON,
            sandbox,
            woken["metadata"]["uid"],
            bundle,
            rootfs,
        )
        criu_dir = realnode.criu_dir()
        assert criu_dir is not None
        restore_began = time.monotonic()
        await RuncDriver(CriuTool(criu_dir / "criu"), root=self.runc_root).restore(
            RestoreTarget(
                sandbox=SandboxRef(namespace=NAMESPACE, name=SESSION),
                target={TARGET_CONTAINER_ID: f"{SESSION}-restored", TARGET_BUNDLE: str(bundle)},
            ),
            self.checkpoint / "checkpoint",
            self.work,
        )
        self.timings["restore"] = time.monotonic() - restore_began
        endpoint = f"{woken['status']['podIP']}:{images.COUNTER_PORT}"
        secret = f"{SESSION}-token"
        self.table.upsert_backend(
            TargetKey(TargetKind.SANDBOX, NAMESPACE, self.pod),
            BackendView("Running", True, (endpoint,), secret),
        )
        self.table.upsert_session(NAMESPACE, SESSION, SessionView("Running", self.pod, secret))

    def clean_up(self) -> None:
        runc = ["runc", "--root", str(self.runc_root)]
        container = f"{SESSION}-restored"
        subprocess.run([*runc, "kill", container, "KILL"], capture_output=True, check=False)
        subprocess.run([*runc, "delete", "--force", container], capture_output=True, check=False)
        self.cluster.kubectl("delete", "pod", self.pod, "--wait=false", check=False)
        shutil.rmtree(self.node.directory / "restored" / SESSION, ignore_errors=True)


@dataclass
class RunningRouter:
    router: Router
    url: str
    parts: list[Any]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def start_router(table: RoutingTable, control: RealNodeWake) -> RunningRouter:
    router = assemble(
        table,
        control,
        RecordingSink(),
        proxy_config=ProxyConfig(domain="kocoon.test"),
        wake_config=WakeConfig(timeout=90),
    )
    runner, port = await start_app(router.app(), "127.0.0.1")
    publisher = asyncio.create_task(router.publisher.run())
    return RunningRouter(router, f"http://127.0.0.1:{port}", [publisher, runner])


async def get_counter(http: aiohttp.ClientSession, router: RunningRouter) -> dict[str, Any]:
    url = f"{router.url}/sessions/{NAMESPACE}/{SESSION}/"
    async with http.get(url, headers=bearer(TOKEN)) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_request_through_the_router_wakes_the_hibernated_session(
    real_node: Cluster, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    pod = "hibernating-session"
    served = run_pod(
        real_node,
        realnode.pod_manifest(pod, images.reference(images.PYTHON), port=images.COUNTER_PORT),
    )
    table = RoutingTable()
    checkpoint = tmp_path / "checkpoint"
    control = RealNodeWake(real_node, table, checkpoint, tmp_path / "restore-work")
    add_session(table, SESSION, Backend(served["status"]["podIP"], images.COUNTER_PORT), TOKEN)
    router = await start_router(table, control)
    try:
        for _ in range(3):
            before = await get_counter(http, router)
        assert before["count"] == 3

        # Hibernate: the agent's kubelet driver checkpoints, the pod goes, the session sleeps.
        endpoint = realnode.kubelet_endpoint(real_node.state)
        kubelet = KubeletDriver(
            KubeletConfig(
                url=endpoint.url,
                ca_file=endpoint.ca_file,
                client_cert=endpoint.client_cert,
                client_key=endpoint.client_key,
                checkpoint_dir=endpoint.checkpoint_dir,
            )
        )
        image_dir = tmp_path / "image"
        image_dir.mkdir()
        await kubelet.checkpoint(
            CheckpointTarget(
                sandbox=SandboxRef(namespace="default", name=SESSION), pod=pod, container=pod
            ),
            image_dir,
            tmp_path / "dump-work",
        )
        real_node.kubectl("delete", "pod", pod, "--grace-period=0", "--force")
        checkpoint.mkdir()
        with tarfile.open(image_dir / ARCHIVE_NAME) as tar:
            tar.extractall(checkpoint, filter="tar")
        table.upsert_session(
            NAMESPACE, SESSION, SessionView("Hibernated", None, f"{SESSION}-token")
        )

        began = time.monotonic()
        after = await get_counter(http, router)
        wake_seconds = time.monotonic() - began
        print(
            f"wake through the router, request to answer: {wake_seconds:.2f} s "
            + ", ".join(f"{k} {v:.2f} s" for k, v in control.timings.items())
        )
        assert len(control.requests) == 1
        assert after["token"] == before["token"]
        assert after["count"] == before["count"] + 1
        assert after["started"] == before["started"]
    finally:
        publisher, runner = router.parts
        publisher.cancel()
        await runner.cleanup()
        if control.task is not None:
            await asyncio.gather(control.task, return_exceptions=True)
        control.clean_up()
