"""Fixtures for the router's tests: real servers on loopback addresses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from kocoon.router.balance import Policy
from kocoon.router.main import assemble
from kocoon.router.proxy import ProxyConfig
from kocoon.router.table import RoutingTable
from kocoon.router.wake import WakeConfig, WakeControl
from tests.router.routerkit import (
    Backend,
    LocalControl,
    RecordingSink,
    RunningRouter,
    backend_app,
    start_app,
)


async def _backend(host: str) -> AsyncIterator[Backend]:
    b = Backend(host)
    runner, b.port = await start_app(backend_app(b), b.host)
    yield b
    await runner.cleanup()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async for b in _backend("127.0.0.2"):
        yield b


@pytest.fixture
async def backend2() -> AsyncIterator[Backend]:
    async for b in _backend("127.0.0.3"):
        yield b


@pytest.fixture
def router_options() -> dict[str, object]:
    """Override in a test module (or parametrize) to tune the router under test."""
    return {}


async def start_router(
    options: dict[str, object],
    table: RoutingTable | None = None,
    control: WakeControl | None = None,
) -> tuple[RunningRouter, list[object]]:
    table = table if table is not None else RoutingTable()
    local = LocalControl(table, delay=float(str(options.get("wake_delay", 0.3))))
    sink = RecordingSink()
    wake_config = options.get("wake_config", WakeConfig(timeout=5))
    assert isinstance(wake_config, WakeConfig)
    built = assemble(
        table,
        control or local,
        sink,
        proxy_config=ProxyConfig(
            domain="kocoon.test",
            sse_heartbeat=float(str(options.get("sse_heartbeat", 0.1))),
            max_body_bytes=int(str(options.get("max_body_bytes", 1024 * 1024))),
            balance=Policy(str(options.get("balance", ProxyConfig.balance))),
        ),
        wake_config=wake_config,
        activity_interval=float(str(options.get("activity_interval", 5.0))),
    )
    runner, port = await start_app(built.app(), "127.0.0.1")
    admin_runner, admin_port = await start_app(built.admin(), "127.0.0.1")
    publisher = asyncio.create_task(built.publisher.run())
    running = RunningRouter(
        built, local, sink, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    )
    return running, [publisher, runner, admin_runner]


async def stop_router(parts: list[object]) -> None:
    publisher, *runners = parts
    assert isinstance(publisher, asyncio.Task)
    publisher.cancel()
    for runner in runners:
        assert isinstance(runner, aiohttp.web.AppRunner)
        await runner.cleanup()


@pytest.fixture
async def router(router_options: dict[str, object]) -> AsyncIterator[RunningRouter]:
    running, parts = await start_router(router_options)
    yield running
    await stop_router(parts)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
    ) as session:
        yield session
