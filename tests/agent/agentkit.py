"""Helpers for agent tests: an agent over real HTTPS, in-process or as a `kocoon agent` process."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from kocoon.agent import local as local_agent
from kocoon.agent import tls
from kocoon.agent.api import build_app
from kocoon.agent.auth import BearerTokenAuthenticator
from kocoon.agent.drivers.base import Driver
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.drivers.filesystem import FilesystemDriver
from kocoon.agent.keys import FileKeyProvider
from kocoon.agent.remote import RemoteStore
from kocoon.agent.service import CheckpointService, ServiceConfig
from kocoon.agent.store import CheckpointStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AgentHandle:
    url: str
    token: str
    ssl: ssl.SSLContext
    state_dir: Path

    def session(self, token: str | None = None) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {token if token is not None else self.token}"}
        return aiohttp.ClientSession(
            base_url=self.url,
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=self.ssl),
            timeout=aiohttp.ClientTimeout(total=600),
        )

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session() as s, s.request(method, path, json=body) as r:
            text = await r.text()
            return r.status, (await r.json()) if text else None


def credentials(root: Path) -> tuple[Path, Path, Path, str, ssl.SSLContext]:
    creds = local_agent.credentials(root)
    return creds.cert, creds.key, creds.token_file, creds.token, creds.client_context()


@asynccontextmanager
async def in_process_agent(
    root: Path,
    drivers: dict[str, Driver] | None = None,
    *,
    remote: RemoteStore | None = None,
    keys_dir: Path | None = None,
    node_name: str = "test-node",
) -> AsyncIterator[AgentHandle]:
    """An agent served over HTTPS on loopback; `keys_dir` shared by two agents stands for keys
    every node can read (the Secret key provider)."""
    cert, key, token_file, token, client_ssl = credentials(root)
    service = CheckpointService(
        ServiceConfig(node_name=node_name, scratch_dir=root / "scratch"),
        CheckpointStore(root / "checkpoints"),
        FileKeyProvider(keys_dir or root / "keys"),
        drivers if drivers is not None else {"filesystem": FilesystemDriver()},
        CriuTool(),
        remote=remote,
    )
    app = build_app(service, [BearerTokenAuthenticator(token_file)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls.server_context(cert, key))
    await site.start()
    try:
        yield AgentHandle(f"https://127.0.0.1:{port}", token, client_ssl, root)
    finally:
        await runner.cleanup()


@asynccontextmanager
async def agent_process(
    root: Path,
    scratch: Path | None = None,
    extra_args: list[str] | None = None,
    client_ssl: ssl.SSLContext | None = None,
) -> AsyncIterator[AgentHandle]:
    """`kocoon agent` as its own process, the way the DaemonSet runs it. `client_ssl` replaces
    the default client context (for an agent that requires client certificates)."""
    creds = local_agent.credentials(root)
    token, client_ssl = creds.token, client_ssl or creds.client_context()
    port = free_port()
    argv = local_agent.command(
        creds, port, root / "state", node_name="test-node", scratch_dir=scratch,
        extra_args=tuple(extra_args or ()),
    )  # fmt: skip
    log = (root / "agent.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    handle = AgentHandle(f"https://127.0.0.1:{port}", token, client_ssl, root / "state")
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"agent exited: {(root / 'agent.log').read_text()}")
            try:
                async with handle.session() as s, s.get("/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent not healthy: {(root / 'agent.log').read_text()}")
            await asyncio.sleep(0.1)
        yield handle
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
