"""An upstream that speaks the OpenAI wire format, for the router's model tests.

Not a model: each server answers with its own name as the text, so a test knows which replica
a request reached. It streams `chat.completion.chunk` events ending with `data: [DONE]` the way
llama-server and vLLM do, one token per event; a test can gate every token (`token_gate`) or
whole answers (`answer_gate`) to see what the router does while an answer is still under way.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kocoon.router.auth import hash_token
from kocoon.router.table import ApiKeyView, ModelBackend, ModelView, RoutingTable, TargetKey
from kocoon.router.table import TargetKind as Kind
from tests.router.routerkit import NAMESPACE, start_app


@dataclass
class Engine:
    name: str
    host: str = "127.0.0.4"
    port: int = 0
    tokens: int = 4
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    in_flight: int = 0
    finished: int = 0  # answers completed
    disconnected: int = 0  # streams whose client went away mid-answer
    answer_gate: asyncio.Event = field(default_factory=asyncio.Event)
    token_gate: asyncio.Semaphore | None = None  # each token, and the end, take one release
    # Like llama-server: a connection that carried a stream is closed, keep-alive or not;
    # here when the next request arrives on it, so that the router surely meets it closed.
    close_after_stream: bool = False
    crash_after_first_token: bool = False  # the connection drops mid-answer
    dropped: int = 0
    _streamed_on: weakref.WeakSet[asyncio.BaseTransport] = field(default_factory=weakref.WeakSet)

    def __post_init__(self) -> None:
        self.answer_gate.set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def backend(self, *, ready: bool = True, sleeping: bool = False) -> ModelBackend:
        return ModelBackend(self.address, ready, sleeping, pod=f"{self.name}-pod")


def _chunk(model: str, index: int, text: str, finish: str | None) -> bytes:
    event = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
        ],
    }
    return f"data: {json.dumps(event)}\n\n".encode()


def engine_app(engine: Engine) -> web.Application:
    async def record(request: web.Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        engine.requests.append(body)
        engine.headers.append(dict(request.headers))
        engine.paths.append(request.rel_url.raw_path)
        return body

    async def chat(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None and transport in engine._streamed_on:
            engine.dropped += 1
            transport.close()
            return web.Response(status=500)  # never sent: the connection is gone
        body = await record(request)
        engine.in_flight += 1
        try:
            await engine.answer_gate.wait()
            words = [f"{engine.name}-{i} " for i in range(engine.tokens)]
            if not body.get("stream"):
                engine.finished += 1
                return web.json_response(
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "".join(words)},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": len(words),
                                  "total_tokens": 1 + len(words)},
                    }
                )  # fmt: skip
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            try:
                for i, word in enumerate(words):
                    if engine.token_gate is not None:
                        await engine.token_gate.acquire()
                    await response.write(_chunk(body["model"], i, word, None))
                    if engine.crash_after_first_token and transport is not None:
                        transport.abort()
                        return response
                if engine.token_gate is not None:  # the end waits for its turn too
                    await engine.token_gate.acquire()
                await response.write(_chunk(body["model"], len(words), "", "stop"))
                await response.write(b"data: [DONE]\n\n")
                await response.write_eof()
                if engine.close_after_stream and transport is not None:
                    engine._streamed_on.add(transport)
            except (asyncio.CancelledError, ConnectionResetError):
                engine.disconnected += 1
                raise
            engine.finished += 1
            return response
        finally:
            engine.in_flight -= 1

    async def completions(request: web.Request) -> web.Response:
        body = await record(request)
        engine.finished += 1
        return web.json_response(
            {
                "id": "cmpl-test",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "text": engine.name, "finish_reason": "stop",
                             "logprobs": None}],
            }
        )  # fmt: skip

    async def embeddings(request: web.Request) -> web.Response:
        body = await record(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        engine.finished += 1
        return web.json_response(
            {
                "object": "list",
                "model": body["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": [float(len(str(text))), 1.0]}
                    for i, text in enumerate(inputs)
                ],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    async def unavailable(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response(
            {"error": {"message": "engine overloaded", "type": "server_error"}}, status=503
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/unavailable", unavailable)
    return app


async def start_engine(engine: Engine) -> web.AppRunner:
    # Like a real engine: a client going away cancels the handler.
    runner, engine.port = await start_app(engine_app(engine), engine.host)
    return runner


def add_model(
    table: RoutingTable,
    name: str,
    backends: list[ModelBackend],
    *,
    served: str | None = None,
    phase: str = "Ready",
    namespace: str = NAMESPACE,
) -> TargetKey:
    table.upsert_model(namespace, name, ModelView(phase, served or name, tuple(backends)))
    return TargetKey(Kind.MODEL, namespace, name)


def add_api_key(
    table: RoutingTable,
    name: str,
    key: str,
    models: set[str] | None = None,
    *,
    namespace: str = NAMESPACE,
) -> None:
    view = ApiKeyView(frozenset({hash_token(key)}), None if models is None else frozenset(models))
    table.upsert_api_key(namespace, name, view)


async def until(probe: Callable[[], bool], within: float = 5, every: float = 0.01) -> None:
    """Wait for a condition of servers the test does not control the timing of."""
    async with asyncio.timeout(within):
        while not probe():  # noqa: ASYNC110 - polls state of several servers, not one event
            await asyncio.sleep(every)
