"""The model data path: the OpenAI-compatible endpoint and `/models/{namespace}/{name}/...`.

A request is authorized by who calls (`callers.py`), not by a token of the model's own; it goes
to the ModelDeployment the body's `model` names in the caller's namespace (or the one in the
path), to one of its ready, awake replicas (`balance.py`: by the prompt's prefix with bounded
load, or fewest open requests). With no such replica the request is held while the model
wakes (`wake.py`): counted as queued on the model's Lease and in the metrics, and answered
with SSE comments meanwhile when it asked for a stream. Responses pass through chunk by chunk;
a client that goes away cancels the handler, which closes the connection to the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from kocoon.router.auth import AUTHORIZATION_HEADER, AuthFailure
from kocoon.router.balance import Balancer, Policy
from kocoon.router.callers import Caller
from kocoon.router.match import Match
from kocoon.router.openai_format import (
    MODELS_PATH,
    ROUTED_PATHS,
    OpenAIError,
    model_entry,
    model_list,
    model_not_allowed,
    model_not_found,
    parse_request,
    prompt_prefix,
    read_body,
    unauthorized,
    unknown_endpoint,
    wants_stream,
)
from kocoon.router.retry import may_resend, send_resending
from kocoon.router.table import Route, RoutingTable, TargetKey, TargetKind
from kocoon.router.wake import Hold, HoldRefused, TargetGone

if TYPE_CHECKING:
    from kocoon.router.proxy import Proxy

KEEPALIVE = b": waiting for model\n\n"
# Request storage: the prompt's prefix, for the `prefix` policy.
PREFIX_KEY: web.RequestKey[str | None] = web.RequestKey("prompt_prefix")
SSE_MEDIA_TYPE = "text/event-stream"
CLIENT_CLOSED = "499"  # nginx's code for a client that went away; only in metrics
MAX_REMEMBERED_ENGINES = 4096


class _RelayedResponse(web.StreamResponse):
    """A streamed answer whose status line and headers leave with its first chunk.

    aiohttp's StreamResponse sends its headers in a write of their own at `prepare()`; where
    a socket send costs a few hundred microseconds (this project's 2-core VM) that is a whole
    extra syscall in front of the first token. `web.Response` defers them the same way (the
    class attribute is aiohttp's switch for it); used only when the first chunk is at hand.
    """

    _send_headers_immediately = False


class ModelEndpoint:
    """Serves model requests for a `Proxy`, with its client, table, waker and tracker."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        config = proxy.config
        self.balancer = Balancer(policy=config.balance, load_factor=config.load_factor)
        # Engines found to close their connection after a streamed answer (llama-server):
        # their streams are sent with `Connection: close`, so that no dead connection is
        # pooled.
        self.closes_after_stream: set[str] = set()
        # (namespace, name) -> request codes seen: the per-model series to drop with the model
        self._series: dict[tuple[str, str], set[str]] = {}
        proxy.table.listeners.append(self._forget_deleted)

    @property
    def table(self) -> RoutingTable:
        return self.proxy.table

    # --- entry points ---------------------------------------------------------------------

    async def handle_openai(self, request: web.Request) -> web.StreamResponse:
        """`/v1/...`: route by the body's `model` within the caller's namespace."""
        started = time.perf_counter()
        try:
            caller = self._caller(request)
            path = request.rel_url.path
            if request.method == "GET" and path == MODELS_PATH:
                return web.json_response(model_list(self._visible(caller)))
            if request.method == "GET" and path.startswith(MODELS_PATH + "/"):
                served = path.removeprefix(MODELS_PATH + "/")
                self._authorize(caller, caller.namespace, served)
                return web.json_response(model_entry(served, caller.namespace))
            if request.method != "POST" or path not in ROUTED_PATHS:
                raise unknown_endpoint(request.method, path)
            body = await read_body(request, self.proxy.config.max_body_bytes)
            document = parse_request(body)
            key = self._authorize(caller, caller.namespace, document["model"])
        except OpenAIError as error:
            return error.response()
        self._note_prefix(request, document)
        query = request.rel_url.raw_query_string
        path = request.rel_url.raw_path + (f"?{query}" if query else "")
        return await self._serve(request, key, body, path, "", wants_stream(document), started)

    async def handle_path(self, request: web.Request, match: Match) -> web.StreamResponse:
        """`/models/{namespace}/{name}/...`: the same credentials, the model named by the path."""
        started = time.perf_counter()
        key = match.key
        try:
            caller = self._caller(request)
            view = self.table.models.get((key.namespace, key.name))
            if view is None or caller.namespace != key.namespace:
                raise OpenAIError(
                    404, f"The model {key.namespace}/{key.name} does not exist in your namespace",
                    code="model_not_found",
                )  # fmt: skip
            if not caller.may_call(key.namespace, key.name, view.served_name):
                raise model_not_allowed(view.served_name, self._why_not(caller))
            body = b""
            if request.body_exists:
                body = await read_body(request, self.proxy.config.max_body_bytes)
        except OpenAIError as error:
            return error.response()
        document = _json_object(body)
        stream = SSE_MEDIA_TYPE in request.headers.get("Accept", "") or (
            document is not None and wants_stream(document)
        )
        if document is not None:
            self._note_prefix(request, document)
        query = request.rel_url.raw_query_string
        path = match.forward_path + (f"?{query}" if query else "")
        return await self._serve(request, key, body, path, match.prefix, stream, started)

    def _note_prefix(self, request: web.Request, document: Mapping[str, Any]) -> None:
        """Kept on the request for the `prefix` policy's pick."""
        if self.balancer.policy is Policy.PREFIX:
            request[PREFIX_KEY] = prompt_prefix(document, self.proxy.config.prefix_chars)

    # --- who may call what ----------------------------------------------------------------

    def _caller(self, request: web.Request) -> Caller:
        found = self.table.callers.identify(request.headers.get(AUTHORIZATION_HEADER))
        if isinstance(found, AuthFailure):
            self.proxy.metrics.auth_failures.labels(found.value).inc()
            raise unauthorized(found.value)
        caller: Caller = found
        return caller

    def _authorize(self, caller: Caller, namespace: str, served: str) -> TargetKey:
        name = self.table.model_by_served_name(namespace, served)
        if name is None:
            raise model_not_found(served)
        if not caller.may_call(namespace, name, served):
            raise model_not_allowed(served, self._why_not(caller))
        return TargetKey(TargetKind.MODEL, namespace, name)

    @staticmethod
    def _why_not(caller: Caller) -> str:
        if caller.model_names is not None:
            listed = ", ".join(sorted(caller.model_names)) or "none"
            return f"AgentSession {caller.name} lists only these in spec.models: {listed}"
        listed = ", ".join(sorted(caller.served_names or ())) or "none"
        return f"API key {caller.name} allows only these models (kocoon.io/models): {listed}"

    def _visible(self, caller: Caller) -> list[dict[str, Any]]:
        return [
            model_entry(view.served_name, namespace)
            for (namespace, name), view in self.table.models.items()
            if caller.may_call(namespace, name, view.served_name)
        ]

    # --- serving ----------------------------------------------------------------------------

    async def _serve(
        self,
        request: web.Request,
        key: TargetKey,
        body: bytes,
        path: str,
        prefix: str,
        stream: bool,
        started: float,
    ) -> web.StreamResponse:
        code = CLIENT_CLOSED
        codes = self._series.setdefault((key.namespace, key.name), set())
        try:
            response = await self._answer(request, key, body, path, prefix, stream, started)
            code = str(response.status)
            return response
        finally:
            codes.add(code)
            self.proxy.metrics.model_requests.labels(key.namespace, key.name, code).inc()

    def _forget_deleted(self) -> None:
        """Drop the metric series of models that are gone (a table listener)."""
        models = self.table.models
        gone = [series for series in self._series if series not in models]
        metrics = self.proxy.metrics
        for namespace, name in gone:
            codes = self._series.pop((namespace, name))
            for gauge in (metrics.model_in_flight, metrics.model_queued, metrics.model_ttfb):
                with contextlib.suppress(KeyError):
                    gauge.remove(namespace, name)
            for code in codes:
                with contextlib.suppress(KeyError):
                    metrics.model_requests.remove(namespace, name, code)

    async def _answer(
        self,
        request: web.Request,
        key: TargetKey,
        body: bytes,
        path: str,
        prefix: str,
        stream: bool,
        started: float,
    ) -> web.StreamResponse:
        route = self.table.resolve(key)
        try:
            if route is None:
                raise OpenAIError(
                    404, f"The model {key.name} no longer exists", code="model_not_found"
                )
            if route.unroutable:
                raise OpenAIError(
                    503, f"The model {key.name} is {route.phase}; it cannot take requests",
                    type="server_error", code="model_unavailable",
                )  # fmt: skip
            if not route.forwardable:
                if stream:
                    return await self._hold_streaming(request, key, body, path, prefix, started)
                route = await self._hold(key)
            return await self._forward(
                request, key, route, body, path, prefix, started, stream=stream
            )
        except OpenAIError as error:
            return error.response()

    # --- holding ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _queued(self, key: TargetKey) -> Iterator[None]:
        gauge = self.proxy.metrics.model_queued.labels(key.namespace, key.name)
        self.proxy.tracker.queue(key)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()
            self.proxy.tracker.unqueue(key)

    def _enter_hold(self, key: TargetKey) -> Hold:
        try:
            return self.proxy.waker.hold(key)
        except HoldRefused as refused:
            raise OpenAIError(
                refused.status, str(refused), type="rate_limit_error", code="queue_full",
                retry_after=refused.retry_after,
            ) from refused  # fmt: skip

    async def _hold(self, key: TargetKey) -> Route:
        hold = self._enter_hold(key)
        with hold, self._queued(key):
            try:
                route: Route | None = await hold.wait_ready()
            except HoldRefused as refused:
                raise _wake_failed(refused, refused.retry_after) from refused
            except TargetGone as gone:
                raise _wake_failed(gone, None) from gone
        if route is None:
            raise AssertionError("wait_ready returned no route without a deadline")
        return route

    async def _hold_streaming(
        self, request: web.Request, key: TargetKey, body: bytes, path: str, prefix: str,
        started: float,
    ) -> web.StreamResponse:  # fmt: skip
        """`stream: true`: answer 200 now and send SSE comments while the model wakes, then the
        engine's events in the same response; a failed wait ends it with an error event."""
        hold = self._enter_hold(key)  # a full queue is still a plain 429
        response = web.StreamResponse(
            status=200, headers={"Content-Type": SSE_MEDIA_TYPE, "Cache-Control": "no-cache"}
        )
        with hold, self._queued(key):
            await response.prepare(request)
            await response.write(KEEPALIVE)
            try:
                route: Route | None = None
                while route is None:
                    route = await hold.wait_ready(self.proxy.config.sse_heartbeat)
                    if route is None:
                        await response.write(KEEPALIVE)
            except (HoldRefused, TargetGone) as error:
                retry = error.retry_after if isinstance(error, HoldRefused) else None
                await response.write(_wake_failed(error, retry).sse_event())
                await response.write_eof()
                return response
        return await self._forward(
            request, key, route, body, path, prefix, started, response, stream=True
        )

    # --- forwarding ---------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        key: TargetKey,
        route: Route,
        body: bytes,
        path: str,
        prefix: str,
        started: float,
        prepared: web.StreamResponse | None = None,
        *,
        stream: bool,
    ) -> web.StreamResponse:
        gauge = self.proxy.metrics.model_in_flight.labels(key.namespace, key.name)
        self.proxy.tracker.begin(key)
        gauge.inc()
        try:
            try:
                endpoint, upstream = await self._open(
                    request, key, route, body, path, prefix, stream
                )
            except (TimeoutError, aiohttp.ClientConnectionError) as error:
                unreachable = OpenAIError(
                    502, f"The model {key.name}'s replica is unreachable ({error})",
                    type="server_error", code="backend_unreachable",
                )  # fmt: skip
                if prepared is None:
                    return unreachable.response()
                with contextlib.suppress(ConnectionError):
                    await prepared.write(unreachable.sse_event())
                    await prepared.write_eof()
                return prepared
            with self.balancer.using(endpoint):
                async with upstream:
                    return await self._relay(request, key, upstream, started, prepared)
        finally:
            gauge.dec()
            self.proxy.tracker.end(key)

    async def _open(
        self, request: web.Request, key: TargetKey, route: Route, body: bytes, path: str,
        prefix: str, stream: bool,
    ) -> tuple[str, aiohttp.ClientResponse]:  # fmt: skip
        """The engine's response (status and headers), retrying while nothing was received.

        Two failures happen before an engine has read the request: a refused connection (a
        replica that has just become ready, not listening yet), retried with backoff, on
        another replica when there is one; and a pooled keep-alive connection the engine has
        closed meanwhile (llama-server closes its connection after every streamed answer while
        announcing keep-alive), resent once on a new connection by the rule both paths share
        (`retry.py`: an inference request has no side effects and its body is held); the
        router then asks that engine to close its connection after each stream
        (`Connection: close`), so the next request does not meet a dead one.
        """
        from kocoon.router.proxy import CONNECT_RETRY_DELAYS, request_headers

        headers = request_headers(
            request.headers, remote=request.remote, scheme=request.scheme, host=request.host,
            prefix=prefix,
        )  # fmt: skip
        resend = may_resend(request.method, request.headers, body, side_effect_free=True)
        failed: str | None = None
        delays = iter((*CONNECT_RETRY_DELAYS, None))
        while True:
            fresh = self.table.resolve(key)  # replicas may have come or gone meanwhile
            endpoints = (fresh.endpoints if fresh is not None else ()) or route.endpoints
            endpoint = self.balancer.pick(endpoints, avoid=failed, prefix=request.get(PREFIX_KEY))
            if stream and endpoint in self.closes_after_stream:
                headers["Connection"] = "close"
            else:
                headers.popall("Connection", None)
            url = f"http://{endpoint}{path}"

            def send(
                client: aiohttp.ClientSession, url: str = url
            ) -> Awaitable[aiohttp.ClientResponse]:
                return client.request(
                    request.method, url, headers=headers, data=body if body else None,
                    allow_redirects=False,
                )  # fmt: skip

            def closes(endpoint: str = endpoint) -> None:
                if len(self.closes_after_stream) >= MAX_REMEMBERED_ENGINES:
                    self.closes_after_stream.clear()
                self.closes_after_stream.add(endpoint)

            try:
                with self.balancer.using(endpoint):
                    upstream = await send_resending(
                        send, self.proxy.client, self.proxy.fresh_client, resend=resend,
                        on_closed=closes,
                    )  # fmt: skip
                return endpoint, upstream
            except aiohttp.ClientConnectorError:
                failed = endpoint
                delay = next(delays)
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def _relay(
        self,
        request: web.Request,
        key: TargetKey,
        upstream: aiohttp.ClientResponse,
        started: float,
        prepared: web.StreamResponse | None,
    ) -> web.StreamResponse:
        from kocoon.router.proxy import response_headers

        ttfb = self.proxy.metrics.model_ttfb.labels(key.namespace, key.name)
        if prepared is not None and upstream.status != 200:
            # The 200 of a held stream is sent: the engine's error becomes an error event.
            text = await upstream.read()
            ttfb.observe(time.perf_counter() - started)
            await prepared.write(_engine_error(upstream.status, text).sse_event())
            await prepared.write_eof()
            return prepared
        response = prepared
        first = True
        if response is None:
            # What the engine has sent already leaves with the headers, in one write; when it
            # has sent nothing yet, the headers go at once (never held back for a token).
            head = upstream.content.read_nowait()
            kind = _RelayedResponse if head else web.StreamResponse
            response = kind(
                status=upstream.status,
                reason=upstream.reason,
                headers=response_headers(upstream.headers),
            )
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            if head:
                ttfb.observe(time.perf_counter() - started)
                first = False
                await response.write(head)
        try:
            async for chunk in upstream.content.iter_any():
                if first:
                    ttfb.observe(time.perf_counter() - started)
                    first = False
                await response.write(chunk)
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as error:
            # The engine failed mid-answer. A stream ends with an error event; any other body
            # cannot say so, and the connection is dropped so the client sees it cut short.
            if SSE_MEDIA_TYPE not in response.headers.get("Content-Type", ""):
                raise
            failed = OpenAIError(
                502, f"The model {key.name}'s replica failed mid-answer ({error})",
                type="server_error", code="backend_failed",
            )  # fmt: skip
            await response.write(failed.sse_event())
        if first:
            ttfb.observe(time.perf_counter() - started)
        await response.write_eof()
        return response


def _json_object(body: bytes) -> Mapping[str, Any] | None:
    if not body.lstrip().startswith(b"{"):
        return None
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _wake_failed(error: Exception, retry_after: int | None) -> OpenAIError:
    return OpenAIError(
        503, str(error), type="server_error",
        code="model_wake_timeout" if retry_after is not None else "model_unavailable",
        retry_after=retry_after,
    )  # fmt: skip


def _engine_error(status: int, text: bytes) -> OpenAIError:
    try:
        error = json.loads(text).get("error")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        error = None
    message = error.get("message") if isinstance(error, dict) else None
    return OpenAIError(
        status, str(message or f"the model's engine answered {status}"),
        type="server_error", code="engine_error",
    )  # fmt: skip
