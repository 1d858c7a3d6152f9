"""The whole data path on the local cluster: a real router process in front of real servers
on the pods' loopback IPs, the operator deciding, the wake spanning a held request."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from kocoon.devcluster import Cluster, stack
from tests.conftest import OperatorProcess
from tests.controllers.helpers import (
    get,
    new_namespace,
    sandbox_events,
    sandbox_manifest,
    wait_phase,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def router(cluster: Cluster, operator: OperatorProcess) -> Iterator[str]:
    _, url = stack.start_router(cluster, "--sse-heartbeat", "0.05", "--wake-timeout", "60")
    stack.start_workloads(cluster)
    try:
        yield url
    finally:
        stack.stop_process(cluster, "kocoon-router")
        stack.stop_process(cluster, "kocoon-workloads")


def hibernated_sandbox(cluster: Cluster, name: str) -> tuple[str, str]:
    """A sandbox that has been running and is now hibernated on idle; (namespace, token)."""
    namespace = new_namespace(cluster, "rt")
    manifest = sandbox_manifest(
        name, namespace, idleTimeout="2s", hibernation="filesystem", workspace={"size": "1Gi"}
    )
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    wait_phase(cluster, namespace, name, "Running")
    wait_phase(cluster, namespace, name, "Hibernated", timeout=40)
    secret = get(cluster, "secret", namespace, f"{name}-token")
    assert secret is not None
    return namespace, base64.b64decode(secret["data"]["token"]).decode()


def wakes(cluster: Cluster, namespace: str, name: str) -> int:
    events = sandbox_events(cluster, namespace, name)
    return sum(int(e.get("count", 1)) for e in events if e["reason"] == "SandboxWaking")


async def test_200_concurrent_requests_wake_once_and_all_are_answered(
    cluster: Cluster, router: str
) -> None:
    namespace, token = hibernated_sandbox(cluster, "crowd")
    url = f"{router}/sandboxes/{namespace}/crowd/hello"
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> tuple[int, dict[str, Any]]:
            async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(60)) as r:
                return r.status, await r.json(content_type=None)

        results = await asyncio.gather(*(one() for _ in range(200)))
    assert [status for status, _ in results] == [200] * 200
    pods = {body["pod"] for _, body in results}
    assert pods == {f"{namespace}/crowd"}
    assert sorted(body["hits"] for _, body in results) == list(range(1, 201))
    sandbox = get(cluster, "sandbox", namespace, "crowd")
    assert sandbox is not None
    assert sandbox["status"]["usage"]["wakeCount"] == 1
    assert wakes(cluster, namespace, "crowd") == 1


async def test_wrong_or_missing_token_gets_401_and_does_not_wake(
    cluster: Cluster, router: str
) -> None:
    namespace, token = hibernated_sandbox(cluster, "locked")
    url = f"{router}/sandboxes/{namespace}/locked/hello"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": token}):
            async with http.get(url, headers=headers) as response:
                assert response.status == 401
    await asyncio.sleep(2)
    sandbox = get(cluster, "sandbox", namespace, "locked")
    assert sandbox is not None
    assert sandbox["status"]["phase"] == "Hibernated"


async def test_sse_stream_spans_a_wake(cluster: Cluster, router: str) -> None:
    namespace, token = hibernated_sandbox(cluster, "stream")
    url = f"{router}/sandboxes/{namespace}/stream/events"
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    lines: list[str] = []
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        assert response.status == 200
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line:
                lines.append(line)
    data = [line for line in lines if line.startswith("data:")]
    assert len(data) == 3
    first_data = lines.index(data[0])
    assert any(line.startswith(":") for line in lines[:first_data]), lines[:5]


async def test_websocket_conversation_spans_a_wake(cluster: Cluster, router: str) -> None:
    namespace, token = hibernated_sandbox(cluster, "talk")
    url = f"{router}/sandboxes/{namespace}/talk/ws"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as socket:
        replies = []
        for text in ("hello", "again"):
            await socket.send_str(text)
            replies.append(await socket.receive_json(timeout=30))
    assert [reply["echo"] for reply in replies] == ["hello", "again"]
    assert replies[0]["pod"] == f"{namespace}/talk"
