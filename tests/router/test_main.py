"""`kocoon router` as a real process (static table), and its flag handling."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from kocoon.router.main import load_static, parse_args
from kocoon.router.table import RoutingTable, TargetKey, TargetKind
from tests.router.routerkit import Backend, bearer

pytestmark = pytest.mark.unit

SOURCE = Path(__file__).resolve().parents[2] / "operator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_router_process_serves_static_targets_and_stops_on_sigterm(
    tmp_path: Path, backend: Backend
) -> None:
    static = tmp_path / "targets.yaml"
    static.write_text(
        "targets:\n"
        f"- {{kind: agentsession, namespace: ns, name: s1, endpoint: '{backend.endpoint}',"
        " token: t1}\n"
    )
    port, admin = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(SOURCE)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kocoon.cli", "router", "--static", str(static),
        "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(20):
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{admin}/readyz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
            url = f"http://127.0.0.1:{port}/sessions/ns/s1/echo/a?b=c"
            async with http.get(url, headers=bearer("t1")) as response:
                assert response.status == 200
                assert (await response.json())["path"] == "/echo/a"
            async with http.get(url, headers=bearer("t2")) as response:
                assert response.status == 401
            async with http.get(f"http://127.0.0.1:{admin}/metrics") as response:
                assert "kocoon_router_requests_total" in await response.text()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_static_file_errors_name_the_entry(tmp_path: Path) -> None:
    static = tmp_path / "bad.yaml"
    static.write_text("targets:\n- {kind: pod, namespace: ns, name: x}\n")
    with pytest.raises(SystemExit, match=r"targets\[0\].*kind one of"):
        load_static(static, RoutingTable())


def test_static_sandbox_without_token_is_closed(tmp_path: Path) -> None:
    static = tmp_path / "open.yaml"
    static.write_text("targets:\n- {namespace: ns, name: box, endpoint: '127.0.0.1:1'}\n")
    table = RoutingTable()
    load_static(static, table)
    route = table.resolve(TargetKey(TargetKind.SANDBOX, "ns", "box"))
    assert route is not None
    assert route.forwardable
    assert route.token_hashes == frozenset()


def test_flags() -> None:
    args = parse_args(["--namespace", "a", "--namespace", "b", "--domain", "x.example"])
    assert args.namespaces == ["a", "b"]
    assert args.event_loop == "asyncio"
    assert args.activity_interval == 5.0


def test_static_model_with_an_api_key(tmp_path: Path) -> None:
    static = tmp_path / "models.yaml"
    static.write_text(
        "targets:\n- {kind: modeldeployment, namespace: ns, name: chat, servedModelName: smollm2,"
        " endpoint: ['127.0.0.1:1', '127.0.0.1:2'], apiKey: sk-1}\n"
    )
    table = RoutingTable()
    load_static(static, table)
    assert table.model_by_served_name("ns", "smollm2") == "chat"
    route = table.resolve(TargetKey(TargetKind.MODEL, "ns", "chat"))
    assert route is not None
    assert route.endpoints == ("127.0.0.1:1", "127.0.0.1:2")
    caller = table.callers.identify("Bearer sk-1")
    assert not isinstance(caller, str)
    assert caller.may_call("ns", "chat", "smollm2")
