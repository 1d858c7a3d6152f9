"""The OpenAI wire format at the router's edge: errors, request bodies, the model list.

Errors are `{"error": {"message", "type", "param", "code"}}` as OpenAI's API and SDKs expect,
so a client sees a 404 for an unknown model as `openai.NotFoundError` with the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kocoon import contract

# The endpoints that route by the body's `model` (POST) and the model list (GET).
ROUTED_PATHS = frozenset(
    f"{contract.OPENAI_BASE_PATH}/{p}" for p in ("chat/completions", "completions", "embeddings")
)
MODELS_PATH = f"{contract.OPENAI_BASE_PATH}/models"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024


def is_openai_path(path: str) -> bool:
    base = contract.OPENAI_BASE_PATH
    return path == base or path.startswith(base + "/")


@dataclass(eq=False)
class OpenAIError(Exception):
    """An answer in OpenAI's error format; raise it anywhere on the model path."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    retry_after: int | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="kocoon"'
        return web.json_response(self.body(), status=self.status, headers=headers)

    def sse_event(self) -> bytes:
        """The error as an SSE event, for a stream whose 200 has already been sent."""
        retry = f"retry: {self.retry_after * 1000}\n" if self.retry_after is not None else ""
        return f"{retry}event: error\ndata: {json.dumps(self.body())}\n\n".encode()


def unauthorized(reason: str) -> OpenAIError:
    return OpenAIError(
        401,
        f"Authorization: Bearer <key> is required ({reason}); use an API key or the token of "
        "an AgentSession whose spec.models names the model",
        type="authentication_error",
        code="invalid_api_key",
    )


def model_not_found(served_name: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{served_name}` does not exist in your namespace",
        code="model_not_found",
        param="model",
    )


def model_not_allowed(served_name: str, why: str) -> OpenAIError:
    return OpenAIError(
        403, f"You may not call the model `{served_name}`: {why}",
        type="permission_error", code="model_not_allowed", param="model",
    )  # fmt: skip


def unknown_endpoint(method: str, path: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"{method} {path} is not served here; the router serves POST "
        f"{', '.join(sorted(ROUTED_PATHS))} and GET {MODELS_PATH}",
        code="unknown_url",
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, refusing with 413 past `limit` bytes (before reading any when
    the length is declared)."""
    too_large = OpenAIError(
        413,
        f"The request body is larger than the router's limit of {limit} bytes",
        code="request_too_large",
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes) -> Mapping[str, Any]:
    """The JSON object of a routed request; 400 naming what is wrong, `model` above all."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OpenAIError(
            400, f"The request body is not valid JSON: {error}", code="invalid_json"
        ) from error
    if not isinstance(document, dict):
        raise OpenAIError(400, "The request body must be a JSON object", code="invalid_json")
    model = document.get("model")
    if model is None or model == "":
        raise OpenAIError(
            400, "The request body is missing the required field `model`",
            code="missing_required_parameter", param="model",
        )  # fmt: skip
    if not isinstance(model, str):
        raise OpenAIError(
            400, "The field `model` must be a string, the served model name",
            code="invalid_type", param="model",
        )  # fmt: skip
    return document


def wants_stream(document: Mapping[str, Any]) -> bool:
    return document.get("stream") is True


def prompt_prefix(document: Mapping[str, Any], chars: int) -> str | None:
    """The first `chars` characters of what identifies a conversation: the chat's messages
    from the first that is not a system (or developer) message, so that one system prompt
    shared by every conversation does not send all of them to one replica; or the
    completion's `prompt`, or the embeddings' `input`."""
    texts: list[str] = []
    if isinstance(messages := document.get("messages"), list):
        started = False
        for message in messages:
            if not isinstance(message, dict):
                continue
            started = started or message.get("role") not in ("system", "developer")
            if not started:
                continue
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):  # content parts: the text ones
                texts.extend(
                    part["text"] for part in content
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                )  # fmt: skip
            if sum(map(len, texts)) >= chars:
                break
    else:
        value = document.get("prompt", document.get("input"))
        if isinstance(value, list) and value and isinstance(value[0], str):
            value = value[0]
        if isinstance(value, str):
            texts.append(value)
    prefix = "".join(texts)[:chars]
    return prefix or None


def model_entry(served_name: str, namespace: str, created: int = 0) -> dict[str, Any]:
    return {"id": served_name, "object": "model", "created": created, "owned_by": namespace}


def model_list(entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": sorted(entries, key=lambda e: str(e["id"]))}
