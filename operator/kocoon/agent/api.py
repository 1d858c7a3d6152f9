"""The agent's HTTP API (served over TLS): routes, authentication, error bodies.

POST   /v1/checkpoints                 checkpoint a container or process -> CheckpointRecord
GET    /v1/checkpoints[?namespace=&name=]   list records
GET    /v1/checkpoints/{id}            one record
DELETE /v1/checkpoints/{id}            delete archive and record
POST   /v1/checkpoints/{id}/restore    restore -> RestoreResult
POST   /v1/prune                       retention for one sandbox -> PruneResult
GET    /v1/node                        node facts and driver availability
GET    /healthz, /metrics              unauthenticated (no sandbox data)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from kocoon.agent import metrics
from kocoon.agent.auth import Authenticator
from kocoon.agent.errors import REASON_INVALID_REQUEST, REASON_UNAUTHORIZED, AgentError
from kocoon.agent.models import (
    CheckpointRequest,
    ErrorBody,
    PruneRequest,
    PruneResult,
    RestoreRequest,
    SandboxRef,
)
from kocoon.agent.service import CheckpointService

log = logging.getLogger(__name__)

SERVICE_KEY = web.AppKey("service", CheckpointService)
PUBLIC_PATHS = frozenset({"/healthz", "/metrics"})
PRINCIPAL_KEY = web.RequestKey("principal", str)

Model = TypeVar("Model", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(
        text=model.model_dump_json(by_alias=True, exclude_none=True), status=status
    )


def _error(status: int, reason: str, message: str) -> web.Response:
    return _json(ErrorBody(reason=reason, message=message), status=status)


async def _parse(request: web.Request, model: type[Model]) -> Model:
    try:
        body = await request.read()
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
        raise AgentError(details, reason=REASON_INVALID_REQUEST, status=400) from None


def auth_middleware(
    authenticators: Sequence[Authenticator],
) -> Callable[..., Awaitable[web.StreamResponse]]:
    refusal = " -- or -- ".join(a.requirement for a in authenticators)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        for authenticator in authenticators:
            principal = authenticator.authenticate(request)
            if principal is not None:
                request[PRINCIPAL_KEY] = principal
                return await handler(request)
        return _error(401, REASON_UNAUTHORIZED, refusal)

    return middleware


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AgentError as exc:
        return _error(exc.status, exc.reason, exc.message)


async def create_checkpoint(request: web.Request) -> web.Response:
    body = await _parse(request, CheckpointRequest)
    record = await request.app[SERVICE_KEY].checkpoint(body)
    return _json(record, status=201)


async def list_checkpoints(request: web.Request) -> web.Response:
    namespace, name = request.query.get("namespace"), request.query.get("name")
    try:
        sandbox = SandboxRef(namespace=namespace, name=name) if namespace and name else None
    except ValidationError as exc:
        raise AgentError(
            f"namespace, name: not a valid sandbox reference: {exc.errors()[0]['msg']}",
            reason=REASON_INVALID_REQUEST,
            status=400,
        ) from None
    records = request.app[SERVICE_KEY].store.list_records(sandbox)
    if namespace and not name:
        records = [r for r in records if r.sandbox.namespace == namespace]
    items = [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in records]
    return web.json_response({"items": items})


async def get_checkpoint(request: web.Request) -> web.Response:
    return _json(request.app[SERVICE_KEY].store.get(request.match_info["id"]))


async def delete_checkpoint(request: web.Request) -> web.Response:
    await request.app[SERVICE_KEY].delete(request.match_info["id"])
    return web.Response(status=204)


async def restore_checkpoint(request: web.Request) -> web.Response:
    body = await _parse(request, RestoreRequest)
    result = await request.app[SERVICE_KEY].restore(request.match_info["id"], body)
    return _json(result)


async def prune(request: web.Request) -> web.Response:
    body = await _parse(request, PruneRequest)
    return _json(PruneResult(deleted=await request.app[SERVICE_KEY].prune(body)))


async def forget_sandbox(request: web.Request) -> web.Response:
    try:
        sandbox = SandboxRef(
            namespace=request.match_info["namespace"], name=request.match_info["name"]
        )
    except ValidationError as exc:
        raise AgentError(
            f"namespace, name: not a valid sandbox reference: {exc.errors()[0]['msg']}",
            reason=REASON_INVALID_REQUEST,
            status=400,
        ) from None
    deleted = await request.app[SERVICE_KEY].forget_sandbox(sandbox)
    return _json(PruneResult(deleted=deleted))


async def node_facts(request: web.Request) -> web.Response:
    return _json(await request.app[SERVICE_KEY].node_facts())


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def build_app(
    service: CheckpointService, authenticators: Sequence[Authenticator]
) -> web.Application:
    if not authenticators:
        raise ValueError("the agent API needs at least one authenticator")
    # Large bodies are never expected: requests are small JSON documents.
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(authenticators)], client_max_size=64 << 10
    )
    app[SERVICE_KEY] = service
    app.router.add_post("/v1/checkpoints", create_checkpoint)
    app.router.add_get("/v1/checkpoints", list_checkpoints)
    app.router.add_get("/v1/checkpoints/{id}", get_checkpoint)
    app.router.add_delete("/v1/checkpoints/{id}", delete_checkpoint)
    app.router.add_post("/v1/checkpoints/{id}/restore", restore_checkpoint)
    app.router.add_post("/v1/prune", prune)
    app.router.add_delete("/v1/sandboxes/{namespace}/{name}", forget_sandbox)
    app.router.add_get("/v1/node", node_facts)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app
