"""When a request is sent to a backend again: the one rule of both data paths.

A pooled keep-alive connection can be closed by the backend just as the router sends on it (an
idle timeout crossing the request; llama-server closes its connection after every streamed
answer while announcing keep-alive; a backend restored from a checkpoint has none of its old
connections). The request then fails before any byte of an answer arrived. It is sent once
more, on a new connection (never another pooled one, which may be just as dead), when sending
it twice cannot do harm:

- its body can be sent again: none, or read whole by the router (a streamed body has been
  consumed); and
- it is idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE, or any method
  with an `Idempotency-Key` header), or the caller knows it has no side effects (an inference
  request on the model path). A proxy must not retry other requests by itself: a backend may
  have applied a POST and then failed before answering.

A refused connection (nothing was sent) is another matter, retried with backoff by each path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import aiohttp
from aiohttp.http_parser import RawResponseMessage

log = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
IDEMPOTENCY_KEY_HEADERS = ("Idempotency-Key", "X-Idempotency-Key")

_T = TypeVar("_T")


def replayable(body: object) -> bool:
    """A body the router can send again: none, or bytes it holds."""
    return body is None or isinstance(body, bytes)


def may_resend(
    method: str, headers: Mapping[str, str], body: object, *, side_effect_free: bool = False
) -> bool:
    if not replayable(body):
        return False
    if side_effect_free or method.upper() in IDEMPOTENT_METHODS:
        return True
    return any(name in headers for name in IDEMPOTENCY_KEY_HEADERS)


def closed_before_answer(error: BaseException) -> bool:
    """The backend closed or reset the connection before the head of its answer arrived."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return False  # never connected: the paths' own refused-connection retry
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return not isinstance(error.message, RawResponseMessage)
    return isinstance(error, aiohttp.ClientOSError)


async def send_resending(
    send: Callable[[aiohttp.ClientSession], Awaitable[_T]],
    pooled: aiohttp.ClientSession,
    fresh: aiohttp.ClientSession,
    *,
    resend: bool,
    on_closed: Callable[[], None] | None = None,
) -> _T:
    """`send` on a pooled connection; once more on a new one (`fresh` pools none) when the
    first closed before answering and `resend` (from `may_resend`) allows it. `send` returns
    a response, or a WebSocket once its handshake is answered."""
    try:
        return await send(pooled)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
        if not closed_before_answer(error):
            raise
        if on_closed is not None:
            on_closed()
        if not resend:
            raise
        log.debug("backend closed the connection before answering; sent again: %r", error)
        return await send(fresh)
