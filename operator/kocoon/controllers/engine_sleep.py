"""Ask model engines whether they sleep, and put them to sleep or wake them (`engineSleep`),
over their own HTTP API.

The engine builder says how (`builders.engines.SleepProtocol`: llama-server's `GET /props`
→ `is_sleeping`, vLLM's `GET /is_sleeping`); this module sends that request to each ready
replica at its pod address and reads the answer into the replica's view. An engine that does
not answer in time is left unknown: nothing is decided on a guess.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import aiohttp

from kocoon.builders.engines import EngineRequest, SleepProtocol
from kocoon.decide.model import Replica

log = logging.getLogger(__name__)
TIMEOUT = aiohttp.ClientTimeout(total=2)
# Falling asleep offloads the weights (vLLM reports seconds for large models): wait longer.
SEND_TIMEOUT = aiohttp.ClientTimeout(total=120)


async def _asleep(
    session: aiohttp.ClientSession, replica: Replica, protocol: SleepProtocol
) -> bool | None:
    request, field = protocol.status, protocol.status_field
    if request is None or field is None or not replica.address:
        return None
    url = f"http://{replica.address}{request.path}"
    try:
        async with session.request(request.method, url, json=request.body) as response:
            if response.status != 200:
                return None
            answer = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        log.debug("%s did not say whether it sleeps: %s", replica.name, error)
        return None
    value = answer.get(field) if isinstance(answer, dict) else None
    return value if isinstance(value, bool) else None


async def ask(replicas: tuple[Replica, ...], protocol: SleepProtocol) -> tuple[Replica, ...]:
    """The replicas, each ready one with `asleep` as its engine answered."""
    asking = [r for r in replicas if r.ready and r.address and not r.deleting]
    if not asking:
        return replicas
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        answers = await asyncio.gather(*(_asleep(session, r, protocol) for r in asking))
    found = {r.name: asleep for r, asleep in zip(asking, answers, strict=True)}
    return tuple(
        dataclasses.replace(r, asleep=found[r.name]) if r.name in found else r for r in replicas
    )


async def send(replica: Replica, request: EngineRequest) -> bool:
    """Send a sleep or wake request to a replica's engine; whether it answered 2xx."""
    if not replica.address:
        return False
    url = f"http://{replica.address}{request.path}"
    try:
        async with (
            aiohttp.ClientSession(timeout=SEND_TIMEOUT) as session,
            session.request(request.method, url, json=request.body) as response,
        ):
            if response.status < 300:
                return True
            log.warning(
                "%s answered %s %s with %d", replica.name, request.method, request.path,
                response.status,
            )  # fmt: skip
    except (aiohttp.ClientError, TimeoutError) as error:
        log.warning("%s: %s %s failed: %s", replica.name, request.method, request.path, error)
    return False
