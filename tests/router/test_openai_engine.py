"""The OpenAI-compatible endpoint in front of the real CPU engine (llama-server + SmolLM2)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.router.enginekit import add_api_key, add_model
from tests.router.routerkit import RunningRouter

pytestmark = pytest.mark.engine

engines: Any = pytest.importorskip("kocoon.devcluster.engines")
KEY = "sk-engine"
PROMPT = [{"role": "user", "content": "Name three colours."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not engines.installed():
        pytest.skip(f"llama-server or its model is missing: {engines.SETUP_HINT}")
    log: Path = tmp_path_factory.mktemp("engine") / "llama-server.log"
    with engines.local_server(log, port=_free_port(), served_name="smollm2") as server:
        yield server


async def _stream(client: openai.AsyncOpenAI) -> tuple[list[str], list[float]]:
    stream = await client.chat.completions.create(
        model="smollm2", messages=PROMPT, stream=True, max_tokens=16, temperature=0, seed=1
    )  # type: ignore[call-overload]
    words: list[str] = []
    arrivals: list[float] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            words.append(chunk.choices[0].delta.content)
            arrivals.append(time.perf_counter())
    return words, arrivals


async def test_a_stream_from_the_real_engine_arrives_token_by_token(
    router: RunningRouter, llama: Any
) -> None:
    add_model(router.table, "chat", [_backend(llama)], served="smollm2")
    add_api_key(router.table, "key", KEY)
    routed = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key=KEY, max_retries=0)
    direct = openai.AsyncOpenAI(base_url=f"{llama.base_url}/v1", api_key="x", max_retries=0)
    words, arrivals = await _stream(routed)
    direct_words, _ = await _stream(direct)
    assert words == direct_words  # the same greedy answer, token for token
    assert len(words) > 5
    # at ~100 tokens/s the tokens come over tens of milliseconds, not in one burst at the end
    assert arrivals[-1] - arrivals[0] > 0.02
    assert len({round(t, 3) for t in arrivals}) > len(words) // 2
    models = await routed.models.list()
    assert [m.id for m in models.data] == ["smollm2"]


def _backend(server: Any) -> Any:
    from kocoon.router.table import ModelBackend

    return ModelBackend(f"127.0.0.1:{server.port}", ready=True, pod="llama-0")
