"""Helpers for the router's tests: backends standing in for pods, the in-memory control.

`LocalControl` is the router's wake interface implemented in memory: it records every wake
request and, after a delay, brings the target up in the routing table the way the watch on a
real cluster would.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from kocoon.router.activity import ActivitySnapshot
from kocoon.router.auth import hash_token
from kocoon.router.main import Router
from kocoon.router.table import BackendView, RoutingTable, SessionView, TargetKey, TargetKind

NAMESPACE = "team-a"


# --- backends --------------------------------------------------------------------------------


@dataclass
class Backend:
    host: str
    port: int = 0
    peers: list[tuple[str, int]] = field(default_factory=list)
    seen_headers: list[dict[str, str]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def backend_app(backend: Backend) -> web.Application:
    async def record(request: web.Request) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            backend.peers.append((peer[0], peer[1]))
        backend.seen_headers.append(dict(request.headers))

    async def echo(request: web.Request) -> web.Response:
        await record(request)
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.rel_url.raw_path,
                "query": request.rel_url.raw_query_string,
                "headers": dict(request.headers),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_len": len(body),
            }
        )

    async def upload(request: web.Request) -> web.Response:
        await record(request)
        digest, total, chunks = hashlib.sha256(), 0, 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            total += len(chunk)
            chunks += 1
        return web.json_response(
            {
                "sha256": digest.hexdigest(),
                "bytes": total,
                "chunks": chunks,
                "transfer_encoding": request.headers.get("Transfer-Encoding", ""),
            }
        )

    async def sse(request: web.Request) -> web.StreamResponse:
        await record(request)
        count = int(request.query.get("n", "3"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(count):
            await response.write(f"event: tick\ndata: {i}\n\n".encode())
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        await record(request)
        ws = web.WebSocketResponse(protocols=("kocoon.test",))
        await ws.prepare(request)
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                if message.data == "bye":
                    await ws.close(code=4001, message=b"bye")
                    break
                await ws.send_str(f"echo:{message.data}")
            elif message.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_post("/upload", upload)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", websocket)
    return app


async def start_app(
    app: web.Application, host: str, *, handler_cancellation: bool = True
) -> tuple[web.AppRunner, int]:
    # As `kocoon router` runs its listeners: a client going away cancels its handler.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port


# --- the cluster side, in memory ---------------------------------------------------------------


@dataclass
class LocalControl:
    """Wakes targets in the table after `delay` seconds, counting requests."""

    table: RoutingTable
    delay: float = 0.3
    requests: list[TargetKey] = field(default_factory=list)
    bring_up: dict[TargetKey, Callable[[], None]] = field(default_factory=dict)

    async def request_wake(self, key: TargetKey) -> None:
        self.requests.append(key)
        action = self.bring_up.get(key)
        if action is not None:
            asyncio.get_running_loop().call_later(self.delay, action)


@dataclass
class RecordingSink:
    writes: list[tuple[TargetKey, ActivitySnapshot, float]] = field(default_factory=list)

    async def renew(self, key: TargetKey, snapshot: ActivitySnapshot) -> None:
        self.writes.append((key, snapshot, asyncio.get_running_loop().time()))


def add_session(
    table: RoutingTable,
    name: str,
    backend: Backend,
    token: str,
    *,
    awake: bool = True,
    control: LocalControl | None = None,
    namespace: str = NAMESPACE,
) -> TargetKey:
    """An AgentSession with its token Secret; hibernated (no Sandbox) unless `awake`.

    With a control, a wake brings up the Sandbox and points the session at it.
    """
    secret = f"{name}-token"
    table.upsert_secret(namespace, secret, [hash_token(token)])
    sandbox = f"{name}-sbx"
    key = TargetKey(TargetKind.SESSION, namespace, name)

    def up() -> None:
        table.upsert_backend(
            TargetKey(TargetKind.SANDBOX, namespace, sandbox),
            BackendView("Running", True, (backend.endpoint,), secret),
        )
        table.upsert_session(namespace, name, SessionView("Running", sandbox, secret))

    if awake:
        up()
    else:
        table.upsert_session(namespace, name, SessionView("Hibernated", None, secret))
    if control is not None:
        control.bring_up[key] = up
    return key


# --- routers -----------------------------------------------------------------------------------


@dataclass
class RunningRouter:
    router: Router
    control: LocalControl
    sink: RecordingSink
    url: str
    admin_url: str

    @property
    def table(self) -> RoutingTable:
        return self.router.table


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
