"""The forwarding itself: an aiohttp server in front, a pooled aiohttp client behind.

Bodies stream both ways chunk by chunk as they arrive (small bodies of known length are read
whole, which is cheaper and bounded); SSE events are written the moment they are read; a
WebSocket is bridged message by message. Hop-by-hop headers and the bearer token stop here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from kocoon.router.activity import ActivityTracker
from kocoon.router.auth import AUTHORIZATION_HEADER, check_bearer
from kocoon.router.balance import DEFAULT_LOAD_FACTOR, DEFAULT_PREFIX_CHARS, Policy
from kocoon.router.match import Match, match_host, match_path
from kocoon.router.metrics import RouterMetrics
from kocoon.router.models import ModelEndpoint
from kocoon.router.openai_format import DEFAULT_MAX_BODY_BYTES, is_openai_path
from kocoon.router.retry import may_resend, replayable, send_resending
from kocoon.router.table import Route, RoutingTable, TargetKey, TargetKind
from kocoon.router.wake import Hold, HoldRefused, TargetGone, Waker, WakeTimedOut

log = logging.getLogger(__name__)

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set again by the client library for the backend connection, or by the WebSocket handshake.
NOT_FORWARDED = frozenset({"host", "content-length", "authorization"})
WEBSOCKET_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol", "sec-websocket-accept"}
)  # fmt: skip
SSE_MEDIA_TYPE = "text/event-stream"
WWW_AUTHENTICATE = 'Bearer realm="kocoon"'
# Bodies up to this size with a known length are read whole instead of streamed.
SMALL_BODY_BYTES = 256 * 1024
DEFAULT_SSE_HEARTBEAT_SECONDS = 10.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
# Backoff while a just-woken backend refuses connections (about 1.5 s in all).
CONNECT_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)


# Requests that arrive before the routing table is first listed wait this long for it.
DEFAULT_SYNC_WAIT_SECONDS = 10.0
SYNC_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ProxyConfig:
    domain: str | None = None
    sse_heartbeat: float = DEFAULT_SSE_HEARTBEAT_SECONDS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # model requests; larger bodies get 413
    balance: Policy = Policy.PREFIX  # across a model's replicas (bench/bench_balance.py)
    prefix_chars: int = DEFAULT_PREFIX_CHARS  # balance=prefix: the prompt's first characters
    load_factor: float = DEFAULT_LOAD_FACTOR  # balance=prefix: at most this times mean load
    sync_wait: float = DEFAULT_SYNC_WAIT_SECONDS  # a request before the first listing waits

    def __post_init__(self) -> None:
        if self.load_factor < 1:
            raise ValueError(f"load_factor must be at least 1, got {self.load_factor}")
        if self.prefix_chars < 1:
            raise ValueError(f"prefix_chars must be at least 1, got {self.prefix_chars}")


# --- pure header handling -------------------------------------------------------------------


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("Connection", "")
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def request_headers(
    incoming: CIMultiDictProxy[str] | CIMultiDict[str],
    *,
    remote: str | None,
    scheme: str,
    host: str | None,
    prefix: str,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """Headers for the backend: end-to-end ones only, no token, plus X-Forwarded-*."""
    dropped = HOP_BY_HOP | NOT_FORWARDED | _connection_tokens(incoming)
    if websocket:
        dropped |= WEBSOCKET_HANDSHAKE
    out: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in incoming.items() if name.lower() not in dropped
    )
    forwarded_for = incoming.get("X-Forwarded-For")
    if remote:
        forwarded_for = f"{forwarded_for}, {remote}" if forwarded_for else remote
    if forwarded_for:
        out["X-Forwarded-For"] = forwarded_for
    out["X-Forwarded-Proto"] = incoming.get("X-Forwarded-Proto", scheme)
    if host:
        out["X-Forwarded-Host"] = incoming.get("X-Forwarded-Host", host)
    if prefix:
        out["X-Forwarded-Prefix"] = prefix
    return out


def response_headers(upstream: Mapping[str, str]) -> CIMultiDict[str]:
    """Headers for the client: the backend's end-to-end ones; framing is set by the server."""
    dropped = HOP_BY_HOP | {"content-length"} | _connection_tokens(upstream)
    items: Iterable[tuple[str, str]] = upstream.items()
    return CIMultiDict((name, value) for name, value in items if name.lower() not in dropped)


def wants_sse(headers: Mapping[str, str]) -> bool:
    return SSE_MEDIA_TYPE in headers.get("Accept", "")


def is_websocket(headers: Mapping[str, str]) -> bool:
    return headers.get("Upgrade", "").lower() == "websocket"


def error_response(
    status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def sse_comment(text: str) -> bytes:
    return b"".join(b": " + line.encode() + b"\n" for line in text.splitlines()) + b"\n"


# --- the proxy -----------------------------------------------------------------------------


class Proxy:
    def __init__(
        self,
        table: RoutingTable,
        tracker: ActivityTracker,
        waker: Waker,
        metrics: RouterMetrics,
        config: ProxyConfig | None = None,
    ) -> None:
        self.table = table
        self.tracker = tracker
        self.waker = waker
        self.metrics = metrics
        self.config = config or ProxyConfig()
        self._client: aiohttp.ClientSession | None = None
        self._fresh_client: aiohttp.ClientSession | None = None
        self.models = ModelEndpoint(self)
        # Whether the routing table has been filled from the API server. A router that has
        # just started (or restarted) must not answer 404 for a target it has not listed yet.
        self.synced: Callable[[], bool] = lambda: True

    async def _wait_synced(self) -> None:
        """Hold a request that came before the table was listed, for at most
        `config.sync_wait` seconds; then it is answered from what the table holds."""
        deadline = time.monotonic() + self.config.sync_wait
        # The table is synced when every watch has listed: a predicate over them, polled.
        while not self.synced() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(SYNC_POLL_SECONDS)

    @property
    def client(self) -> aiohttp.ClientSession:
        if self._client is None:
            raise RuntimeError("Proxy.start() must run before requests are served")
        return self._client

    async def start(self, _app: web.Application | None = None) -> None:
        pooled = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, enable_cleanup_closed=True)
        self._client = self._session(pooled)
        # A request resent after a pooled connection closed goes on a connection of its own.
        self._fresh_client = self._session(aiohttp.TCPConnector(limit=0, force_close=True))

    def _session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bytes pass through as the backend encoded them
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
        )
        # aiohttp resends idempotent requests once by itself, through the same pool (where the
        # next connection may be just as dead). Off: `retry.py` is the one rule of both paths.
        session._retry_connection = False
        return session

    @property
    def fresh_client(self) -> aiohttp.ClientSession:
        if self._fresh_client is None:
            raise RuntimeError("Proxy.start() must run before requests are served")
        return self._fresh_client

    async def close(self, _app: web.Application | None = None) -> None:
        for client in (self._client, self._fresh_client):
            if client is not None:
                await client.close()

    def app(self) -> web.Application:
        app = web.Application(handler_args={"max_field_size": 65536})
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.close)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        path = request.rel_url.raw_path
        # The host form (a session's own URL) wins: a session may serve /v1 paths itself.
        match = None
        if self.config.domain and request.host:
            match = match_host(path, request.host, self.config.domain)
        openai = match is None and is_openai_path(path)
        if not openai:
            match = match or match_path(path)
            if match is None:
                return error_response(
                    404, "no target in this URL: use /v1/... (OpenAI-compatible) or "
                    "/sessions/{namespace}/{name}/... (or /sandboxes/..., /models/...)",
                )  # fmt: skip
        kind = TargetKind.MODEL if match is None else match.key.kind
        code = "499"  # the client went away and the handler was cancelled
        if not self.synced():
            await self._wait_synced()
        try:
            if match is None:
                response = await self.models.handle_openai(request)
            elif kind is TargetKind.MODEL:
                response = await self.models.handle_path(request, match)
            else:
                response = await self._handle_target(request, match)
            code = str(response.status)
            return response
        finally:
            self.metrics.requests.labels(kind.value, code).inc()
            self.metrics.duration.labels(kind.value).observe(time.perf_counter() - started)

    async def _handle_target(self, request: web.Request, match: Match) -> web.StreamResponse:
        key = match.key
        route = self.table.resolve(key)
        if route is None:
            return error_response(404, f"{key.kind} {key.namespace}/{key.name} does not exist")
        failure = check_bearer(request.headers.get(AUTHORIZATION_HEADER), route.token_hashes)
        if failure is not None:
            self.metrics.auth_failures.labels(failure.value).inc()
            return error_response(
                401,
                f"{AUTHORIZATION_HEADER}: Bearer <token> is required for {key} ({failure.value}); "
                "the token is in the Secret named by the target's status.tokenSecretRef",
                headers={"WWW-Authenticate": WWW_AUTHENTICATE},
            )
        if route.unroutable:
            return error_response(503, f"{key} is {route.phase}; it cannot take requests")
        self.tracker.begin(key)
        try:
            if not route.forwardable:
                if wants_sse(request.headers) and not is_websocket(request.headers):
                    return await self._hold_streaming(request, match)
                ready = await self._hold(key)
                if isinstance(ready, web.StreamResponse):
                    return ready
                route = ready
            if is_websocket(request.headers):
                return await self._bridge_websocket(request, match, route)
            return await self._forward(request, match, route)
        finally:
            self.tracker.end(key)

    # --- holding ---------------------------------------------------------------------------

    def _enter_hold(self, key: TargetKey) -> Hold | web.Response:
        try:
            return self.waker.hold(key)
        except HoldRefused as refused:
            return self._refused(refused)

    def _refused(self, refused: HoldRefused) -> web.Response:
        return error_response(
            refused.status, str(refused), headers={"Retry-After": str(refused.retry_after)}
        )

    async def _hold(self, key: TargetKey) -> Route | web.Response:
        hold = self._enter_hold(key)
        if isinstance(hold, web.Response):
            return hold
        with hold:
            try:
                route = await hold.wait_ready()
            except HoldRefused as refused:
                return self._refused(refused)
            except TargetGone as gone:
                return error_response(503, str(gone))
        if route is None:  # wait_ready without a slice limit returns a route or raises
            raise AssertionError("wait_ready returned no route without a deadline")
        return route

    async def _hold_streaming(self, request: web.Request, match: Match) -> web.StreamResponse:
        """SSE: answer 200 now, keep the client's connection alive with comments while the
        target wakes, then stream the backend's events into the same response."""
        hold = self._enter_hold(match.key)
        if isinstance(hold, web.Response):
            return hold
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": SSE_MEDIA_TYPE, "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        with hold:
            await response.write(sse_comment(f"waking {match.key}"))
            try:
                route = None
                while route is None:
                    route = await hold.wait_ready(self.config.sse_heartbeat)
                    if route is None:
                        await response.write(sse_comment(f"waking {match.key}"))
            except (HoldRefused, TargetGone) as error:
                retry_ms = getattr(error, "retry_after", 5) * 1000
                payload = json.dumps({"error": str(error)})
                await response.write(
                    f"retry: {retry_ms}\nevent: error\ndata: {payload}\n\n".encode()
                )
                await response.write_eof()
                if isinstance(error, WakeTimedOut):
                    log.info("held stream timed out", extra={"target": str(match.key)})
                return response
        await self._stream_into(request, match, route, response)
        return response

    async def _stream_into(
        self, request: web.Request, match: Match, route: Route, response: web.StreamResponse
    ) -> None:
        try:
            async with self._connected(request, match, route, None) as upstream:
                if upstream.status != 200:
                    payload = json.dumps({"error": f"backend answered {upstream.status}"})
                    await response.write(f"event: error\ndata: {payload}\n\n".encode())
                else:
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
        except aiohttp.ClientError as error:
            payload = json.dumps({"error": f"backend unreachable: {error}"})
            await response.write(f"event: error\ndata: {payload}\n\n".encode())
        await response.write_eof()

    # --- forwarding ------------------------------------------------------------------------

    def _upstream_url(self, match: Match, route: Route, query: str, scheme: str = "http") -> str:
        endpoint = self.table.pick_endpoint(route)
        return f"{scheme}://{endpoint}{match.forward_path}" + (f"?{query}" if query else "")

    def _upstream_request(
        self,
        client: aiohttp.ClientSession,
        request: web.Request,
        match: Match,
        route: Route,
        body: object,
    ) -> aiohttp.client._RequestContextManager:
        headers = request_headers(
            request.headers,
            remote=request.remote,
            scheme=request.scheme,
            host=request.host,
            prefix=match.prefix,
        )
        skip = [h for h in ("Accept", "Accept-Encoding", "Content-Type") if h not in headers]
        return client.request(
            request.method,
            self._upstream_url(match, route, request.rel_url.raw_query_string),
            headers=headers,
            data=body,
            allow_redirects=False,
            skip_auto_headers=skip,
        )

    async def _send(
        self, request: web.Request, match: Match, route: Route, body: object
    ) -> aiohttp.ClientResponse:
        """The upstream response (status and headers), sent again while nothing was received.

        A target that has just become Ready may not accept connections for a moment (a
        restored process re-opening its socket): a refused connection means nothing was sent,
        so it is retried with backoff for any method whose body can be sent again. A pooled
        connection the backend closed before answering is the rule of `retry.py`: resent
        once, on a new connection, when the request is safe to send twice.
        """
        resend = may_resend(request.method, request.headers, body)
        for delay in (*CONNECT_RETRY_DELAYS, None):
            try:
                return await send_resending(
                    lambda client: self._upstream_request(client, request, match, route, body),
                    self.client, self.fresh_client, resend=resend,
                )  # fmt: skip
            except aiohttp.ClientConnectorError:
                if delay is None or not replayable(body):
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def _connected(
        self, request: web.Request, match: Match, route: Route, body: object
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        upstream = await self._send(request, match, route, body)
        async with upstream:
            yield upstream

    async def _forward(
        self, request: web.Request, match: Match, route: Route
    ) -> web.StreamResponse:
        body: object = None
        if request.body_exists:
            length = request.content_length
            small = length is not None and length <= SMALL_BODY_BYTES
            body = await request.read() if small else request.content
        try:
            async with self._connected(request, match, route, body) as upstream:
                headers = response_headers(upstream.headers)
                length = upstream.content_length
                if length is not None and length <= SMALL_BODY_BYTES:
                    payload = await upstream.read()
                    return web.Response(
                        status=upstream.status, reason=upstream.reason, body=payload,
                        headers=headers,
                    )  # fmt: skip
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=headers
                )
                if length is not None:
                    response.content_length = length
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (TimeoutError, aiohttp.ClientConnectionError) as error:
            log.warning(
                "backend unreachable", extra={"target": str(match.key), "error": repr(error)}
            )
            return error_response(502, f"{match.key}: backend unreachable ({error})")

    async def _ws_connect_retrying(
        self, url: str, headers: Mapping[str, str], protocols: list[str]
    ) -> aiohttp.ClientWebSocketResponse:
        """Like `_send`: a just-woken backend may refuse the first connections, and a pooled
        connection may be closed (the handshake is a GET: resent once on a new one)."""

        def connect(client: aiohttp.ClientSession) -> Awaitable[aiohttp.ClientWebSocketResponse]:
            return client.ws_connect(url, headers=headers, protocols=protocols, max_msg_size=0)

        for delay in (*CONNECT_RETRY_DELAYS, None):
            try:
                return await send_resending(connect, self.client, self.fresh_client, resend=True)
            except aiohttp.ClientConnectorError:
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _bridge_websocket(
        self, request: web.Request, match: Match, route: Route
    ) -> web.StreamResponse:
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]  # fmt: skip
        headers = request_headers(
            request.headers,
            remote=request.remote,
            scheme=request.scheme,
            host=request.host,
            prefix=match.prefix,
            websocket=True,
        )
        url = self._upstream_url(match, route, request.rel_url.raw_query_string, scheme="ws")
        try:
            upstream = await self._ws_connect_retrying(url, headers, protocols)
        except aiohttp.WSServerHandshakeError as error:
            return error_response(
                502, f"{match.key}: backend refused the WebSocket ({error.status})"
            )
        except (TimeoutError, aiohttp.ClientConnectionError) as error:
            return error_response(502, f"{match.key}: backend unreachable ({error})")
        async with upstream:
            chosen = (upstream.protocol,) if upstream.protocol else ()
            client = web.WebSocketResponse(protocols=chosen, max_msg_size=0)
            await client.prepare(request)
            to_backend = asyncio.create_task(_pump(client, upstream))
            to_client = asyncio.create_task(_pump(upstream, client))
            done, pending = await asyncio.wait(
                {to_backend, to_client}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            code = upstream.close_code if to_client in done else client.close_code
            await client.close(code=code or aiohttp.WSCloseCode.OK)
            await upstream.close(code=client.close_code or aiohttp.WSCloseCode.OK)
            return client


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for message in source:
        if message.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type is aiohttp.WSMsgType.ERROR:
            break


def admin_app(metrics: RouterMetrics, ready: Callable[[], bool]) -> web.Application:
    """/healthz (the process serves), /readyz (the table is synced), /metrics."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="routing table not synced yet\n")

    async def metrics_endpoint(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app
