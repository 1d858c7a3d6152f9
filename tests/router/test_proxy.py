"""Real HTTP through a router on 127.0.0.1 to real backends on 127.0.0.2/3."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest

from kocoon.router.table import BackendView, TargetKey, TargetKind
from kocoon.router.wake import WakeConfig
from tests.router.routerkit import NAMESPACE, Backend, RunningRouter, add_session, bearer

# Real sockets on loopback, no cluster and no privileges.
pytestmark = pytest.mark.unit

TOKEN = "s3cret-token-a"
OTHER_TOKEN = "s3cret-token-b"


def session_url(router: RunningRouter, name: str, rest: str = "echo") -> str:
    return f"{router.url}/sessions/{NAMESPACE}/{name}/{rest}"


async def test_forwards_path_query_and_strips_prefix(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "alpha", backend, TOKEN)
    url = session_url(router, "alpha", "echo/deeper/x%20y") + "?a=1&b=two"
    async with http.get(url, headers=bearer(TOKEN)) as response:
        assert response.status == 200
        seen = await response.json()
    assert seen["path"] == "/echo/deeper/x%20y"
    assert seen["query"] == "a=1&b=two"
    assert seen["headers"]["X-Forwarded-Prefix"] == f"/sessions/{NAMESPACE}/alpha"
    assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert seen["headers"]["X-Forwarded-Proto"] == "http"


async def test_host_form_routes_to_the_session(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "alpha", backend, TOKEN)
    headers = {**bearer(TOKEN), "Host": f"alpha.{NAMESPACE}.kocoon.test:8080"}
    async with http.get(f"{router.url}/echo/x", headers=headers) as response:
        assert response.status == 200
        seen = await response.json()
    assert seen["path"] == "/echo/x"
    assert seen["headers"]["X-Forwarded-Host"] == f"alpha.{NAMESPACE}.kocoon.test:8080"


async def test_token_and_hop_by_hop_headers_never_reach_the_backend(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "alpha", backend, TOKEN)
    headers = {
        **bearer(TOKEN),
        "Connection": "keep-alive, X-Private-Hop",
        "X-Private-Hop": "secret",
        "Proxy-Authorization": "Basic Zm9v",
        "X-End-To-End": "kept",
    }
    async with http.get(session_url(router, "alpha"), headers=headers) as response:
        assert response.status == 200
    forwarded = {k.lower(): v for k, v in backend.seen_headers[-1].items()}
    assert "authorization" not in forwarded
    assert "x-private-hop" not in forwarded
    assert "proxy-authorization" not in forwarded
    assert forwarded["x-end-to-end"] == "kept"
    assert TOKEN not in " ".join(forwarded.values())


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"Authorization": "Basic YWxhZGRpbjpvcGVu"}, "malformed"),
        (bearer("not-the-token"), "wrong"),
        (bearer(OTHER_TOKEN), "wrong"),  # another session's token
    ],
)
async def test_refuses_without_the_sessions_token(
    router: RunningRouter,
    backend: Backend,
    backend2: Backend,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    reason: str,
) -> None:
    add_session(router.table, "alpha", backend, TOKEN)
    add_session(router.table, "beta", backend2, OTHER_TOKEN)
    async with http.post(session_url(router, "alpha"), headers=headers, data=b"x") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert reason in (await response.json())["error"]
    assert backend.seen_headers == []  # nothing reached the backend
    # and beta's own token still opens beta
    async with http.get(session_url(router, "beta"), headers=bearer(OTHER_TOKEN)) as response:
        assert response.status == 200


async def test_rotation_accepts_current_and_previous_token(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    from kocoon.router.auth import hash_token

    add_session(router.table, "alpha", backend, TOKEN)
    router.table.upsert_secret(NAMESPACE, "alpha-token", [hash_token("new"), hash_token(TOKEN)])
    for token in ("new", TOKEN):
        async with http.get(session_url(router, "alpha"), headers=bearer(token)) as response:
            assert response.status == 200
    router.table.upsert_secret(NAMESPACE, "alpha-token", [hash_token("new")])
    async with http.get(session_url(router, "alpha"), headers=bearer(TOKEN)) as response:
        assert response.status == 401


async def test_unknown_target_and_unroutable_url(
    router: RunningRouter, http: aiohttp.ClientSession
) -> None:
    async with http.get(session_url(router, "nobody")) as response:
        assert response.status == 404
    async with http.get(f"{router.url}/elsewhere") as response:
        assert response.status == 404
        assert "/sessions/{namespace}/{name}" in (await response.json())["error"]


async def test_client_keep_alive_and_backend_connection_reuse(
    router: RunningRouter, backend: Backend
) -> None:
    add_session(router.table, "alpha", backend, TOKEN)
    host, port = router.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = (
        f"GET /sessions/{NAMESPACE}/alpha/echo HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n"
    ).encode()
    for _ in range(5):  # five requests on one client connection
        writer.write(request)
        await writer.drain()
        status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 200"), status
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            assert not (name.lower() == "connection" and "close" in value.lower())
        await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    assert len(backend.peers) == 5
    assert len(set(backend.peers)) == 1  # the router reused one pooled backend connection


async def test_chunked_upload_streams_through(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "alpha", backend, TOKEN)
    parts = [os.urandom(64 * 1024) for _ in range(40)]  # 2.5 MiB, length unknown upfront

    async def body() -> aiohttp.StreamReader:  # type: ignore[misc]
        for part in parts:
            yield part
            await asyncio.sleep(0)

    url = session_url(router, "alpha", "upload")
    async with http.post(url, data=body(), headers=bearer(TOKEN)) as response:
        assert response.status == 200
        seen = await response.json()
    assert seen["bytes"] == sum(map(len, parts))
    assert seen["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert seen["transfer_encoding"] == "chunked"
    assert seen["chunks"] > 1  # arrived in pieces, not as one buffered blob


async def test_sse_passes_events_through_as_they_come(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "alpha", backend, TOKEN)
    headers = {**bearer(TOKEN), "Accept": "text/event-stream"}
    async with http.get(session_url(router, "alpha", "sse?n=5"), headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = (await response.read()).decode()
    assert [line for line in text.splitlines() if line.startswith("data:")] == [
        f"data: {i}" for i in range(5)
    ]


@pytest.mark.parametrize("router_options", [{"wake_delay": 0.35, "sse_heartbeat": 0.1}])
async def test_sse_spanning_a_wake_gets_comments_then_events(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    key = add_session(router.table, "sleepy", backend, TOKEN, awake=False, control=router.control)
    headers = {**bearer(TOKEN), "Accept": "text/event-stream"}
    lines: list[str] = []
    async with http.get(session_url(router, "sleepy", "sse?n=3"), headers=headers) as response:
        assert response.status == 200
        async for raw in response.content:
            lines.append(raw.decode().rstrip("\n"))
    comments = [line for line in lines if line.startswith(":")]
    data = [line for line in lines if line.startswith("data:")]
    assert len(comments) >= 3  # one at once, then one per heartbeat while waking
    assert data == ["data: 0", "data: 1", "data: 2"]
    assert lines.index(comments[-1]) < lines.index(data[0])
    assert router.control.requests == [key]


@pytest.mark.parametrize("router_options", [{"wake_delay": 0.3}])
async def test_websocket_conversation_spanning_a_wake(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    key = add_session(router.table, "sleepy", backend, TOKEN, awake=False, control=router.control)
    url = session_url(router, "sleepy", "ws").replace("http://", "ws://")
    started = asyncio.get_running_loop().time()
    async with http.ws_connect(url, headers=bearer(TOKEN), protocols=("kocoon.test",)) as ws:
        assert asyncio.get_running_loop().time() - started >= 0.25  # held during the wake
        assert ws.protocol == "kocoon.test"
        for word in ("hello", "world"):
            await ws.send_str(word)
            assert (await ws.receive_str()) == f"echo:{word}"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive_bytes()) == b"\x03\x02\x01"
        await ws.send_str("bye")
        closing = await ws.receive()
        assert closing.type in {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED}
    assert ws.close_code == 4001  # the backend's close code reached the client
    assert router.control.requests == [key]


async def test_websocket_without_token_is_refused(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "alpha", backend, TOKEN)
    url = session_url(router, "alpha", "ws").replace("http://", "ws://")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers=bearer(OTHER_TOKEN))
    assert refused.value.status == 401
    assert backend.seen_headers == []


@pytest.mark.parametrize("router_options", [{"wake_delay": 0.5}])
async def test_200_concurrent_requests_wake_once_and_all_are_answered(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    key = add_session(router.table, "sleepy", backend, TOKEN, awake=False, control=router.control)

    async def one(i: int) -> tuple[int, int]:
        url = session_url(router, "sleepy", f"echo/{i}")
        async with http.post(url, headers=bearer(TOKEN), data=str(i).encode()) as response:
            body = await response.json()
            assert body["path"] == f"/echo/{i}"
            return response.status, body["body_len"]

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert [status for status, _ in results] == [200] * 200
    assert router.control.requests == [key]
    assert router.router.waker.held_total == 0


@pytest.mark.parametrize(
    "router_options", [{"wake_config": WakeConfig(timeout=0.3, retry_after=7)}]
)
async def test_wake_timeout_is_503_with_retry_after(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "stuck", backend, TOKEN, awake=False)  # nothing will wake it
    async with http.get(session_url(router, "stuck"), headers=bearer(TOKEN)) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "7"
        assert "did not become Ready" in (await response.json())["error"]


@pytest.mark.parametrize(
    "router_options",
    [{"wake_config": WakeConfig(timeout=0.3, retry_after=3), "sse_heartbeat": 0.1}],
)
async def test_held_stream_timeout_ends_with_an_error_event(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "stuck", backend, TOKEN, awake=False)
    headers = {**bearer(TOKEN), "Accept": "text/event-stream"}
    async with http.get(session_url(router, "stuck", "sse"), headers=headers) as response:
        text = (await response.read()).decode()
    assert text.startswith(":")
    assert "retry: 3000\nevent: error\n" in text


@pytest.mark.parametrize(
    "router_options",
    [
        {
            "wake_config": WakeConfig(timeout=2, queue_per_target=3, queue_total=100),
            "wake_delay": 0.5,
        }
    ],
)
async def test_full_queue_is_429_with_retry_after(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "sleepy", backend, TOKEN, awake=False, control=router.control)

    async def one() -> tuple[int, str | None]:
        async with http.get(session_url(router, "sleepy"), headers=bearer(TOKEN)) as response:
            await response.read()
            return response.status, response.headers.get("Retry-After")

    results = await asyncio.gather(*(one() for _ in range(8)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 3 + [429] * 5
    assert all(retry == "5" for status, retry in results if status == 429)


@pytest.mark.parametrize("router_options", [{"activity_interval": 0.3}])
async def test_activity_lease_writes_are_rate_limited(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    key = add_session(router.table, "alpha", backend, TOKEN)
    loop = asyncio.get_running_loop()
    started = loop.time()
    requests = 0

    async def one() -> None:
        async with http.get(session_url(router, "alpha"), headers=bearer(TOKEN)) as response:
            assert response.status == 200
            await response.read()

    while loop.time() - started < 1.0:
        await asyncio.gather(*(one() for _ in range(10)))
        requests += 10
    await asyncio.sleep(0.4)  # let the last renewal out
    writes = [t for k, _, t in router.sink.writes if k == key]
    assert requests >= 100
    assert 2 <= len(writes) <= int(1.4 / 0.3) + 1
    gaps = [b - a for a, b in itertools.pairwise(writes)]
    assert all(gap >= 0.3 - 0.01 for gap in gaps)


async def test_backend_down_is_502(router: RunningRouter, http: aiohttp.ClientSession) -> None:
    router.table.upsert_backend(
        TargetKey(TargetKind.SANDBOX, NAMESPACE, "gone"),
        BackendView("Running", True, ("127.0.0.9:9",), "gone-token"),
    )
    from kocoon.router.auth import hash_token

    router.table.upsert_secret(NAMESPACE, "gone-token", [hash_token(TOKEN)])
    async with http.get(
        f"{router.url}/sandboxes/{NAMESPACE}/gone/x", headers=bearer(TOKEN)
    ) as response:
        assert response.status == 502


async def test_admin_endpoints(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "alpha", backend, TOKEN)
    async with http.get(session_url(router, "alpha"), headers=bearer(TOKEN)) as response:
        assert response.status == 200
    async with http.get(session_url(router, "alpha")) as response:
        assert response.status == 401
    async with http.get(f"{router.admin_url}/healthz") as response:
        assert response.status == 200
    async with http.get(f"{router.admin_url}/readyz") as response:
        assert response.status == 200
    async with http.get(f"{router.admin_url}/metrics") as response:
        text = await response.text()
    assert 'kocoon_router_requests_total{code="200",kind="agentsession"} 1.0' in text
    assert 'kocoon_router_auth_failures_total{reason="missing"} 1.0' in text
    assert 'kocoon_router_targets{kind="agentsession"} 1.0' in text


async def test_a_backend_that_starts_listening_late_is_retried(
    router: RunningRouter, http: aiohttp.ClientSession
) -> None:
    # Ready in the table a moment before the process accepts connections (a just-woken
    # sandbox): the router retries the refused connection instead of answering 502.
    from aiohttp import web

    from kocoon.devcluster.processes import free_port
    from tests.router.routerkit import backend_app

    late = Backend("127.0.0.4", free_port())
    add_session(router.table, "late", late, TOKEN)

    async def start_later() -> web.AppRunner:
        await asyncio.sleep(0.3)
        runner = web.AppRunner(backend_app(late))
        await runner.setup()
        await web.TCPSite(runner, late.host, late.port).start()
        return runner

    starting = asyncio.create_task(start_later())
    async with http.get(session_url(router, "late"), headers=bearer(TOKEN)) as response:
        assert response.status == 200
    runner = await starting
    await runner.cleanup()


async def test_a_backend_that_never_listens_is_a_502(
    router: RunningRouter, http: aiohttp.ClientSession
) -> None:
    from kocoon.devcluster.processes import free_port

    add_session(router.table, "dead", Backend("127.0.0.4", free_port()), TOKEN)
    async with http.get(session_url(router, "dead"), headers=bearer(TOKEN)) as response:
        assert response.status == 502


@pytest.mark.parametrize("kind", [TargetKind.SESSION, TargetKind.SANDBOX])
@pytest.mark.parametrize("state", ["Failed", "deleting"])
async def test_failed_or_terminating_targets_are_answered_at_once_not_held(
    router: RunningRouter,
    backend: Backend,
    http: aiohttp.ClientSession,
    kind: TargetKind,
    state: str,
) -> None:
    from kocoon.router import kube

    add_session(router.table, "gone", backend, TOKEN, awake=False)  # the token Secret
    metadata: dict[str, object] = {"namespace": NAMESPACE, "name": "gone"}
    status: dict[str, object] = {"phase": "Hibernated", "tokenSecretRef": {"name": "gone-token"}}
    if state == "Failed":
        status["phase"] = "Failed"
    else:  # the operator never writes Terminating: a deletionTimestamp is the fact
        metadata["deletionTimestamp"] = "2026-12-04T00:00:00Z"
    kube.apply_event(router.table, kind, "MODIFIED", {"metadata": metadata, "status": status})
    prefix = "sessions" if kind is TargetKind.SESSION else "sandboxes"
    started = asyncio.get_running_loop().time()
    url = f"{router.url}/{prefix}/{NAMESPACE}/gone/echo"
    async with http.get(url, headers=bearer(TOKEN)) as response:
        assert response.status == 503
        phase = "Failed" if state == "Failed" else "Terminating"
        assert phase in (await response.json())["error"]
    assert asyncio.get_running_loop().time() - started < 1  # the wake timeout is 5 s
    assert router.control.requests == []


# --- a backend that closes its keep-alive connections -----------------------------------------


class KeepAliveCloser:
    """A real HTTP/1.1 server that answers the first request of each connection with
    keep-alive, and closes the connection when the next one arrives on it, unanswered (an
    idle timeout crossing the request; `reset` closes with a TCP reset instead of a FIN)."""

    def __init__(self, *, reset: bool = False) -> None:
        self.reset = reset
        self.answered: list[tuple[str, bytes, dict[str, str]]] = []  # (request line, body, headers)
        self.dropped: list[str] = []
        self.connections = 0
        self.host = "127.0.0.4"
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def backend(self) -> Backend:
        return Backend(self.host, self.port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import socket
        import struct

        self.connections += 1
        try:
            for served in itertools.count():
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head.decode().split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (f.partition(":") for f in fields if f)}  # fmt: skip
                if served:
                    self.dropped.append(line)
                    if self.reset:
                        sock = writer.get_extra_info("socket")
                        linger = struct.pack("ii", 1, 0)  # close with a reset
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    writer.close()
                    return
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.answered.append((line, body, headers))
                if headers.get("upgrade", "").lower() == "websocket":
                    await self._accept_websocket(headers["sec-websocket-key"], reader, writer)
                    return
                payload = f"answer {len(self.answered)}".encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def _accept_websocket(
        self, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """RFC 6455 §4.2.2: the handshake's answer; then the connection is held until closed."""
        import base64

        guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1((key + guid).encode()).digest()).decode()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        await writer.drain()
        await reader.read()  # until the router closes
        writer.close()


@pytest.fixture
async def closer(request: pytest.FixtureRequest) -> AsyncIterator[KeepAliveCloser]:
    server = KeepAliveCloser(reset=getattr(request, "param", "fin") == "reset")
    await server.start()
    yield server
    await server.stop()


def target_url(router: RunningRouter, kind: TargetKind, rest: str = "echo") -> str:
    if kind is TargetKind.SESSION:
        return session_url(router, "alpha", rest)
    return f"{router.url}/sandboxes/{NAMESPACE}/alpha-sbx/{rest}"  # add_session's Sandbox


@pytest.mark.parametrize("closer", ["fin", "reset"], indirect=True)
@pytest.mark.parametrize("kind", [TargetKind.SESSION, TargetKind.SANDBOX])
async def test_a_pooled_connection_the_backend_closed_is_resent_on_a_new_one(
    router: RunningRouter, closer: KeepAliveCloser, http: aiohttp.ClientSession, kind: TargetKind
) -> None:
    add_session(router.table, "alpha", closer.backend, TOKEN)
    answers = []
    for i in range(3):
        async with http.get(target_url(router, kind, f"read/{i}"), headers=bearer(TOKEN)) as r:
            assert r.status == 200, await r.text()
            answers.append(await r.text())
    # the 2nd request met the connection pooled after the 1st answer, closed, and was resent
    # once on a new connection, which was not pooled: the 3rd opened one more
    assert closer.dropped == ["GET /read/1 HTTP/1.1"]
    assert [line for line, _, _ in closer.answered] == [
        "GET /read/0 HTTP/1.1", "GET /read/1 HTTP/1.1", "GET /read/2 HTTP/1.1",
    ]  # fmt: skip
    assert closer.connections == 3
    assert answers == ["answer 1", "answer 2", "answer 3"]
    # the resent request is the same request (headers as forwarded, no token), on a
    # connection of its own
    first, resent = closer.answered[0][2], closer.answered[1][2]
    assert "authorization" not in resent
    assert resent.get("connection") == "close"
    hop = {"host", "connection"}
    assert {k: v for k, v in resent.items() if k not in hop} == {
        k: v for k, v in first.items() if k not in hop
    }


async def test_a_buffered_body_with_an_idempotent_method_or_key_is_resent_a_post_is_not(
    router: RunningRouter, closer: KeepAliveCloser, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "alpha", closer.backend, TOKEN)
    url = session_url(router, "alpha", "item")

    async def send(method: str, body: bytes, **headers: str) -> int:
        async with http.request(method, url, data=body, headers=bearer(TOKEN) | headers) as r:
            await r.read()
            return r.status

    assert await send("GET", b"") == 200  # leaves a pooled connection the backend will close
    assert await send("PUT", b"x" * 1000) == 200  # idempotent, body held: resent
    assert closer.answered[-1][:2] == ("PUT /item HTTP/1.1", b"x" * 1000)
    assert await send("POST", b"y" * 1000, **{"Idempotency-Key": "k1"}) == 200
    assert closer.answered[-1][:2] == ("POST /item HTTP/1.1", b"y" * 1000)
    # A POST the backend may have applied before failing is never sent twice by the router.
    assert await send("POST", b"z" * 1000) == 502
    assert closer.dropped[-1] == "POST /item HTTP/1.1"
    assert not any(line.startswith("POST") and body == b"z" * 1000
                   for line, body, _ in closer.answered)  # fmt: skip


async def test_a_streamed_body_is_not_resent(
    router: RunningRouter, closer: KeepAliveCloser, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "alpha", closer.backend, TOKEN)
    url = session_url(router, "alpha", "upload")
    async with http.get(url, headers=bearer(TOKEN)) as response:
        assert response.status == 200

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"c" * 100

    # chunked: the router streams it to the backend and cannot send it again
    async with http.put(url, data=chunks(), headers=bearer(TOKEN)) as response:
        assert response.status == 502
    assert closer.dropped == ["PUT /upload HTTP/1.1"]
    assert len(closer.answered) == 1


async def test_a_websocket_handshake_on_a_closed_pooled_connection_is_resent(
    router: RunningRouter, closer: KeepAliveCloser, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "alpha", closer.backend, TOKEN)
    async with http.get(session_url(router, "alpha", "page"), headers=bearer(TOKEN)) as r:
        assert r.status == 200  # leaves a pooled connection the backend will close
    async with http.ws_connect(session_url(router, "alpha", "ws"), headers=bearer(TOKEN)) as ws:
        assert not ws.closed
    assert closer.dropped == ["GET /ws HTTP/1.1"]
    assert [line for line, _, _ in closer.answered] == ["GET /page HTTP/1.1", "GET /ws HTTP/1.1"]


async def test_a_request_before_the_table_is_listed_waits_for_it_instead_of_404(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    """A router that has just (re)started answers from its table only once the watches have
    listed; until then a request for a target it does not know yet waits, not 404s."""
    synced = False
    router.router.proxy.synced = lambda: synced

    async def list_later() -> None:
        nonlocal synced
        await asyncio.sleep(0.3)
        add_session(router.table, "late", backend, TOKEN)
        synced = True

    listing = asyncio.create_task(list_later())
    async with http.get(session_url(router, "late"), headers=bearer(TOKEN)) as response:
        assert response.status == 200
    await listing
    # Once synced, an unknown target is answered at once.
    async with http.get(session_url(router, "nobody")) as response:
        assert response.status == 404
