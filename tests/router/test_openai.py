"""The OpenAI-compatible endpoint through a real router, with the `openai` SDK as the client.

Upstreams are real HTTP servers speaking the OpenAI wire format (`enginekit.py`) on loopback
addresses; the router under test is the real one on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from kocoon.router import kube
from kocoon.router.table import SessionView, TargetKey
from kocoon.router.wake import WakeConfig
from tests.router.enginekit import Engine, add_api_key, add_model, start_engine, until
from tests.router.routerkit import NAMESPACE, Backend, RunningRouter, add_session, bearer

pytestmark = pytest.mark.unit

KEY = "sk-team-a"


@pytest.fixture
async def engine_a() -> AsyncIterator[Engine]:
    engine = Engine("alpha", host="127.0.0.4")
    runner = await start_engine(engine)
    yield engine
    await runner.cleanup()


@pytest.fixture
async def engine_b() -> AsyncIterator[Engine]:
    engine = Engine("beta", host="127.0.0.5")
    runner = await start_engine(engine)
    yield engine
    await runner.cleanup()


def sdk(router: RunningRouter, key: str = KEY) -> openai.AsyncOpenAI:
    # No retries: every answer the router gives is what the test sees.
    return openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0)


async def chat(client: openai.AsyncOpenAI, model: str) -> str:
    answer = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return answer.choices[0].message.content or ""


# --- routing ------------------------------------------------------------------------------


async def test_routes_by_model_and_forwards_the_body_unchanged(
    router: RunningRouter, engine_a: Engine, engine_b: Engine
) -> None:
    add_model(router.table, "chat-a", [engine_a.backend()], served="smollm2")
    add_model(router.table, "chat-b", [engine_b.backend()])
    add_api_key(router.table, "key", KEY)
    client = sdk(router)
    assert (await chat(client, "smollm2")).startswith("alpha-0")
    assert (await chat(client, "chat-b")).startswith("beta-0")
    completion = await client.completions.create(model="smollm2", prompt="x")
    assert completion.choices[0].text == "alpha"
    embedding = await client.embeddings.create(model="chat-b", input=["abc", "de"])
    assert [e.embedding for e in embedding.data] == [[3.0, 1.0], [2.0, 1.0]]
    assert engine_a.paths == ["/v1/chat/completions", "/v1/completions"]
    assert engine_b.paths == ["/v1/chat/completions", "/v1/embeddings"]
    assert engine_a.requests[0]["model"] == "smollm2"  # the served name reaches the engine
    assert engine_a.requests[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert all("authorization" not in {k.lower() for k in h} for h in engine_a.headers)
    listed = await client.models.list()
    assert sorted(m.id for m in listed.data) == ["chat-b", "smollm2"]
    assert {m.owned_by for m in listed.data} == {NAMESPACE}
    assert (await client.models.retrieve("smollm2")).id == "smollm2"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_the_callers_namespace_decides_which_model_a_name_means(
    router: RunningRouter, engine_a: Engine, engine_b: Engine
) -> None:
    add_model(router.table, "chat", [engine_a.backend()], namespace="team-a")
    add_model(router.table, "chat", [engine_b.backend()], namespace="team-b")
    add_model(router.table, "only-b", [engine_b.backend()], namespace="team-b")
    add_api_key(router.table, "key", "sk-a", namespace="team-a")
    add_api_key(router.table, "key", "sk-b", namespace="team-b")
    assert (await chat(sdk(router, "sk-a"), "chat")).startswith("alpha")
    assert (await chat(sdk(router, "sk-b"), "chat")).startswith("beta")
    with pytest.raises(openai.NotFoundError) as missing:
        await chat(sdk(router, "sk-a"), "only-b")  # exists, but in another namespace
    assert missing.value.body == {
        "message": "The model `only-b` does not exist in your namespace",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert [m.id for m in (await sdk(router, "sk-a").models.list()).data] == ["chat"]


async def test_path_form_takes_the_same_credentials(
    router: RunningRouter, engine_a: Engine, http: aiohttp.ClientSession
) -> None:
    add_model(router.table, "chat-a", [engine_a.backend()], served="smollm2")
    add_api_key(router.table, "key", KEY)
    add_api_key(router.table, "key", "sk-b", namespace="team-b")
    client = openai.AsyncOpenAI(
        base_url=f"{router.url}/models/{NAMESPACE}/chat-a/v1", api_key=KEY, max_retries=0
    )
    assert (await chat(client, "smollm2")).startswith("alpha")
    assert engine_a.paths == ["/v1/chat/completions"]
    assert engine_a.headers[0]["X-Forwarded-Prefix"] == f"/models/{NAMESPACE}/chat-a"
    url = f"{router.url}/models/{NAMESPACE}/chat-a/v1/chat/completions"
    body = {"model": "smollm2", "messages": []}
    async with http.post(url, json=body) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "invalid_api_key"
    async with http.post(url, json=body, headers=bearer("sk-b")) as response:
        assert response.status == 404  # another namespace's key does not see the model
        assert (await response.json())["error"]["code"] == "model_not_found"


# --- who may call what ----------------------------------------------------------------------


async def test_a_session_token_calls_exactly_its_spec_models(
    router: RunningRouter, engine_a: Engine, engine_b: Engine, backend: Backend
) -> None:
    add_model(router.table, "chat-a", [engine_a.backend()], served="smollm2")
    add_model(router.table, "chat-b", [engine_b.backend()], served="other")
    add_session(router.table, "agent", backend, "session-token")
    view = router.table.sessions[NAMESPACE, "agent"]
    router.table.upsert_session(
        NAMESPACE,
        "agent",
        SessionView(view.phase, view.sandbox_ref, view.token_secret, frozenset({"chat-a"})),
    )
    client = sdk(router, "session-token")
    assert (await chat(client, "smollm2")).startswith("alpha")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await chat(client, "other")
    assert denied.value.status_code == 403
    assert denied.value.body["param"] == "model"  # type: ignore[index]
    assert "spec.models" in denied.value.message
    assert [m.id for m in (await client.models.list()).data] == ["smollm2"]
    assert engine_b.requests == []
    # the session ends: its token opens nothing any more
    router.table.upsert_session(
        NAMESPACE, "agent", SessionView("Expired", None, view.token_secret, frozenset({"chat-a"}))
    )
    with pytest.raises(openai.AuthenticationError):
        await chat(client, "smollm2")


async def test_session_models_come_from_the_objects_spec() -> None:
    view = kube.session_view(
        {
            "metadata": {"namespace": "ns", "name": "s"},
            "spec": {"models": [{"name": "chat-a"}, {"name": "embed"}]},
            "status": {"phase": "Running", "tokenSecretRef": {"name": "s-token", "key": "token"}},
        }
    )
    assert view.models == {"chat-a", "embed"}
    assert view.token_secret == "s-token"


async def test_api_keys_allow_their_listed_models_and_nothing_else(
    router: RunningRouter, engine_a: Engine, engine_b: Engine
) -> None:
    add_model(router.table, "chat-a", [engine_a.backend()], served="smollm2")
    add_model(router.table, "chat-b", [engine_b.backend()], served="other")
    add_api_key(router.table, "narrow", "sk-narrow", {"smollm2"})
    assert (await chat(sdk(router, "sk-narrow"), "smollm2")).startswith("alpha")
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await chat(sdk(router, "sk-narrow"), "other")
    assert "kocoon.io/models" in denied.value.message
    for wrong in ("sk-wrong", "session-token-of-nobody"):
        with pytest.raises(openai.AuthenticationError) as refused:
            await chat(sdk(router, wrong), "smollm2")
        assert refused.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    router.table.delete_api_key(NAMESPACE, "narrow")
    with pytest.raises(openai.AuthenticationError):
        await chat(sdk(router, "sk-narrow"), "smollm2")
    assert engine_b.requests == []


def test_api_key_secrets_are_read_as_digests_with_their_model_list() -> None:
    import base64

    from kocoon.router.auth import hash_token

    secret = {
        "metadata": {
            "namespace": "ns",
            "name": "k",
            "annotations": {"kocoon.io/models": " smollm2, other ,"},
        },
        "data": {"key": base64.b64encode(b"sk-1").decode()},
    }
    view = kube.api_key_view(secret)
    assert view.digests == {hash_token("sk-1")}
    assert view.models == {"smollm2", "other"}
    del secret["metadata"]["annotations"]  # type: ignore[attr-defined]
    assert kube.api_key_view(secret).models is None  # every model of the namespace


# --- bad input, in OpenAI's error format ------------------------------------------------------


async def test_unknown_model_is_a_404_naming_the_model_field(router: RunningRouter) -> None:
    add_api_key(router.table, "key", KEY)
    with pytest.raises(openai.NotFoundError) as missing:
        await chat(sdk(router), "nope")
    assert missing.value.body["param"] == "model"  # type: ignore[index]
    assert "`nope`" in missing.value.message


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"[1, 2]", "invalid_json", "JSON object"),
        (b'{"messages": []}', "missing_required_parameter", "`model`"),
        (b'{"model": 7}', "invalid_type", "`model`"),
    ],
)
async def test_malformed_requests_are_400s_that_say_what_is_wrong(
    router: RunningRouter, http: aiohttp.ClientSession, body: bytes, code: str, named: str
) -> None:
    add_api_key(router.table, "key", KEY)
    async with http.post(
        f"{router.url}/v1/chat/completions", data=body,
        headers={**bearer(KEY), "Content-Type": "application/json"},
    ) as response:  # fmt: skip
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == code
    assert named in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("router_options", [{"max_body_bytes": 4096}])
async def test_bodies_over_the_limit_are_413(
    router: RunningRouter, engine_a: Engine, http: aiohttp.ClientSession
) -> None:
    add_model(router.table, "chat-a", [engine_a.backend()])
    add_api_key(router.table, "key", KEY)
    big = {"model": "chat-a", "messages": [{"role": "user", "content": "x" * 5000}]}
    with pytest.raises(openai.APIStatusError) as too_large:
        await sdk(router).chat.completions.create(**big)  # type: ignore[call-overload]
    assert too_large.value.status_code == 413
    assert "4096 bytes" in too_large.value.message

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(10):
            yield b" " * 1000

    url = f"{router.url}/v1/chat/completions"
    async with http.post(url, data=chunked(), headers=bearer(KEY)) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "request_too_large"
    assert engine_a.requests == []


async def test_missing_key_and_unknown_endpoint(
    router: RunningRouter, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{router.url}/v1/models") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["error"]["type"] == "authentication_error"
    add_api_key(router.table, "key", KEY)
    async with http.post(f"{router.url}/v1/images/generations", headers=bearer(KEY)) as response:
        assert response.status == 404
        assert "/v1/chat/completions" in (await response.json())["error"]["message"]


# --- streaming ------------------------------------------------------------------------------------


async def test_tokens_reach_the_client_before_the_engine_has_finished(
    router: RunningRouter, engine_a: Engine
) -> None:
    engine_a.token_gate = asyncio.Semaphore(0)
    add_model(router.table, "chat-a", [engine_a.backend()])
    add_api_key(router.table, "key", KEY)
    stream = await sdk(router).chat.completions.create(
        model="chat-a", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[str] = []
    engine_a.token_gate.release()  # the engine may send its first token, and only that
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
            # each token arrived while the engine was blocked before the next one
            assert engine_a.finished == 0
            engine_a.token_gate.release()
    assert received == [f"alpha-{i} " for i in range(engine_a.tokens)]
    assert engine_a.finished == 1


async def test_a_client_that_goes_away_cancels_the_engines_answer(
    router: RunningRouter, engine_a: Engine, http: aiohttp.ClientSession
) -> None:
    engine_a.token_gate = asyncio.Semaphore(1)  # one token, then the engine waits
    add_model(router.table, "chat-a", [engine_a.backend()])
    add_api_key(router.table, "key", KEY)
    body = {"model": "chat-a", "messages": [], "stream": True}
    response = await http.post(f"{router.url}/v1/chat/completions", json=body, headers=bearer(KEY))
    first = await response.content.readuntil(b"\n\n")
    assert b"alpha-0" in first
    response.close()  # the client goes away mid-answer
    gate = engine_a.token_gate

    def gone() -> bool:
        gate.release()  # let the engine try its next token: it finds the connection closed
        return engine_a.disconnected > 0

    await until(gone)
    assert engine_a.finished == 0
    await until(lambda: not router.router.proxy.models.balancer.in_flight)
    async with http.get(f"{router.admin_url}/metrics") as metrics:
        text = await metrics.text()
    labels = f'code="499",model="chat-a",namespace="{NAMESPACE}"'
    assert f"kocoon_router_model_requests_total{{{labels}}} 1.0" in text


# --- balancing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("router_options", [{"balance": "least-in-flight"}])
async def test_least_in_flight_sends_work_away_from_a_busy_replica(
    router: RunningRouter, engine_a: Engine, engine_b: Engine
) -> None:
    add_model(router.table, "chat", [engine_a.backend(), engine_b.backend()])
    add_api_key(router.table, "key", KEY)
    client = sdk(router)
    engine_a.answer_gate.clear()
    engine_b.answer_gate.clear()
    stuck = [asyncio.create_task(chat(client, "chat")) for _ in range(2)]
    await until(lambda: engine_a.in_flight + engine_b.in_flight == 2)
    assert (engine_a.in_flight, engine_b.in_flight) == (1, 1)  # one each
    engine_b.answer_gate.set()  # beta finishes its request and is free; alpha stays busy
    await until(lambda: engine_b.in_flight == 0)
    for _ in range(10):
        assert (await chat(client, "chat")).startswith("beta")  # round robin would alternate
    assert (len(engine_a.requests), len(engine_b.requests)) == (1, 11)
    engine_a.answer_gate.set()
    await asyncio.gather(*stuck)


def test_the_prefix_is_the_conversation_after_its_system_prompt() -> None:
    from kocoon.router.openai_format import prompt_prefix

    chat = {"messages": [
        {"role": "system", "content": "You are a shared system prompt. " * 10},
        {"role": "user", "content": [{"type": "text", "text": "task 7: "},
                                     {"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "assistant", "content": "on it"},
    ]}  # fmt: skip
    assert prompt_prefix(chat, 10) == "task 7: on"
    assert prompt_prefix(chat, 100) == "task 7: on it"
    assert prompt_prefix({"prompt": "abcdef"}, 3) == "abc"
    assert prompt_prefix({"input": ["abcdef", "x"]}, 4) == "abcd"
    assert prompt_prefix({"messages": []}, 10) is None


@pytest.mark.parametrize("router_options", [{"balance": "prefix"}])
async def test_prefix_policy_keeps_a_conversation_on_one_replica_within_bounded_load(
    router: RunningRouter, engine_a: Engine, engine_b: Engine
) -> None:
    add_model(router.table, "chat", [engine_a.backend(), engine_b.backend()])
    add_api_key(router.table, "key", KEY)
    client = sdk(router)

    async def turn(conversation: int, system: str) -> str:
        answer = await client.chat.completions.create(model="chat", messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": f"conversation {conversation}: " + "context " * 20},
        ])  # fmt: skip
        return (answer.choices[0].message.content or "").split("-")[0]

    homes = {c: await turn(c, "one system prompt") for c in range(16)}
    for c in range(16):  # again, under another system prompt: the same replica each time
        assert await turn(c, "another system prompt") == homes[c]
    assert set(homes.values()) == {"alpha", "beta"}  # 16 conversations hash to both

    # One conversation, 4 requests at once: its replica takes at most 1.25x the mean load
    engine_a.answer_gate.clear()
    engine_b.answer_gate.clear()
    stuck = []
    for n in range(1, 5):
        stuck.append(asyncio.create_task(turn(0, "s")))
        await until(lambda n=n: engine_a.in_flight + engine_b.in_flight == n)
    # bounds ceil(1.25 * n / 2) for n = 1..4: 1, 2, 2, 3 -> the 3rd goes to the other replica
    home, other = (engine_a, engine_b) if homes[0] == "alpha" else (engine_b, engine_a)
    assert (home.in_flight, other.in_flight) == (3, 1)
    engine_a.answer_gate.set()
    engine_b.answer_gate.set()
    await asyncio.gather(*stuck)


async def test_a_sleeping_replica_never_gets_a_request(
    router: RunningRouter, engine_a: Engine, engine_b: Engine
) -> None:
    add_model(router.table, "chat", [engine_a.backend(sleeping=True), engine_b.backend(ready=True)])
    add_api_key(router.table, "key", KEY)
    for _ in range(6):
        assert (await chat(sdk(router), "chat")).startswith("beta")
    assert engine_a.requests == []


# --- at zero: hold, wake, release -------------------------------------------------------------


def _scaled_to_zero(router: RunningRouter, engine: Engine, *, sleeping: bool = False) -> TargetKey:
    """A model with no serving replica whose wake brings `engine` up (as the watch would)."""
    backends = [engine.backend(sleeping=True)] if sleeping else []
    key = add_model(router.table, "chat", backends, phase="ScaledToZero")
    router.control.bring_up[key] = lambda: add_model(router.table, "chat", [engine.backend()])
    add_api_key(router.table, "key", KEY)
    return key


@pytest.mark.parametrize("router_options", [{"wake_delay": 0.5, "activity_interval": 0.05}])
async def test_a_request_at_zero_is_held_counted_and_released_when_a_replica_is_ready(
    router: RunningRouter, engine_a: Engine, http: aiohttp.ClientSession
) -> None:
    key = _scaled_to_zero(router, engine_a, sleeping=True)
    answer = asyncio.create_task(chat(sdk(router), "chat"))
    await asyncio.sleep(0.25)  # held: the wake is asked for, nothing reached the engine
    assert router.control.requests == [key]
    assert engine_a.requests == []
    async with http.get(f"{router.admin_url}/metrics") as response:
        metrics = await response.text()
    assert f'kocoon_router_model_queued{{model="chat",namespace="{NAMESPACE}"}} 1.0' in metrics
    assert (await answer).startswith("alpha")
    assert router.control.requests == [key]  # one wake for the whole wait
    queued = [snap.queued for k, snap, _ in router.sink.writes if k == key]
    assert 1 in queued  # the model's Lease carried the held request as demand
    # and, once released, a renewal says nothing is held
    await until(lambda: [s.queued for k, s, _ in router.sink.writes if k == key][-1] == 0)


@pytest.mark.parametrize("router_options", [{"wake_delay": 0.5, "sse_heartbeat": 0.1}])
async def test_a_held_stream_gets_keep_alives_then_the_tokens(
    router: RunningRouter, engine_a: Engine, http: aiohttp.ClientSession
) -> None:
    _scaled_to_zero(router, engine_a)
    body = {"model": "chat", "messages": [], "stream": True}
    async with http.post(
        f"{router.url}/v1/chat/completions", json=body, headers=bearer(KEY)
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = (await response.read()).decode()
    events = text.split("\n\n")
    keepalives = [e for e in events if e == ": waiting for model"]
    assert len(keepalives) >= 3  # one at once, then one per heartbeat during the 0.5 s wake
    first_data = next(i for i, e in enumerate(events) if e.startswith("data:"))
    assert all(e == ": waiting for model" for e in events[:first_data])
    assert events[-2] == "data: [DONE]"
    # and the SDK, which skips comments, streams the answer as usual
    _scaled_to_zero(router, engine_a)
    stream = await sdk(router).chat.completions.create(model="chat", messages=[], stream=True)
    words = [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content]
    assert words == [f"alpha-{i} " for i in range(engine_a.tokens)]


@pytest.mark.parametrize("router_options", [{"wake_delay": 0.3, "sse_heartbeat": 0.1}])
async def test_the_path_form_holds_a_stream_the_same_way(
    router: RunningRouter, engine_a: Engine, http: aiohttp.ClientSession
) -> None:
    _scaled_to_zero(router, engine_a)
    url = f"{router.url}/models/{NAMESPACE}/chat/v1/chat/completions"
    body = {"model": "chat", "messages": [], "stream": True}
    async with http.post(url, json=body, headers=bearer(KEY)) as response:
        text = (await response.read()).decode()
    assert text.startswith(": waiting for model\n\n")
    assert text.endswith("data: [DONE]\n\n")
    assert engine_a.paths == ["/v1/chat/completions"]


@pytest.mark.parametrize(
    "router_options", [{"wake_config": WakeConfig(timeout=5, queue_per_target=1, retry_after=7)}]
)
async def test_a_full_queue_is_a_429_with_retry_after(
    router: RunningRouter, engine_a: Engine
) -> None:
    key = add_model(router.table, "chat", [], phase="ScaledToZero")
    add_api_key(router.table, "key", KEY)
    held = asyncio.create_task(chat(sdk(router), "chat"))
    await asyncio.sleep(0.1)
    with pytest.raises(openai.RateLimitError) as full:
        await chat(sdk(router), "chat")
    assert full.value.response.headers["Retry-After"] == "7"
    assert full.value.body["code"] == "queue_full"  # type: ignore[index]
    add_model(router.table, "chat", [engine_a.backend()])
    assert (await held).startswith("alpha")
    assert router.control.requests == [key]


@pytest.mark.parametrize(
    "router_options", [{"wake_config": WakeConfig(timeout=0.3, retry_after=11)}]
)
async def test_a_wake_that_takes_too_long_is_a_503_with_retry_after(
    router: RunningRouter,
) -> None:
    add_model(router.table, "chat", [], phase="Waking")
    add_api_key(router.table, "key", KEY)
    with pytest.raises(openai.InternalServerError) as timed_out:
        await chat(sdk(router), "chat")
    assert timed_out.value.status_code == 503
    assert timed_out.value.response.headers["Retry-After"] == "11"
    assert timed_out.value.body["code"] == "model_wake_timeout"  # type: ignore[index]
    # a stream has its 200 already: it ends with an error event the SDK raises
    stream = await sdk(router).chat.completions.create(model="chat", messages=[], stream=True)
    with pytest.raises(openai.APIError, match="did not become Ready"):
        async for _ in stream:
            pass


async def test_a_failed_model_answers_503_at_once_without_a_wake(
    router: RunningRouter, engine_a: Engine
) -> None:
    add_model(router.table, "chat", [engine_a.backend(ready=False)], phase="Failed")
    add_api_key(router.table, "key", KEY)
    started = asyncio.get_running_loop().time()
    with pytest.raises(openai.InternalServerError) as failed:
        await chat(sdk(router), "chat")
    assert asyncio.get_running_loop().time() - started < 1
    assert failed.value.status_code == 503
    assert "Failed" in failed.value.message
    assert router.control.requests == []


async def test_a_model_deleted_while_held_answers_503(router: RunningRouter) -> None:
    add_model(router.table, "chat", [], phase="ScaledToZero")
    add_api_key(router.table, "key", KEY)
    answer = asyncio.create_task(chat(sdk(router), "chat"))
    await asyncio.sleep(0.1)
    router.table.delete_model(NAMESPACE, "chat")
    with pytest.raises(openai.InternalServerError, match="no longer exists"):
        await answer


# --- the engine's own errors, and metrics ---------------------------------------------------


async def test_engine_errors_pass_through_and_metrics_count_per_model(
    router: RunningRouter, engine_a: Engine, http: aiohttp.ClientSession
) -> None:
    add_model(router.table, "chat", [engine_a.backend()])
    add_api_key(router.table, "key", KEY)
    await chat(sdk(router), "chat")
    url = f"{router.url}/models/{NAMESPACE}/chat/v1/unavailable"
    async with http.post(url, json={}, headers=bearer(KEY)) as response:
        assert response.status == 503
        assert (await response.json())["error"]["message"] == "engine overloaded"
    async with http.get(f"{router.admin_url}/metrics") as response:
        metrics = await response.text()
    labels = f'model="chat",namespace="{NAMESPACE}"'
    assert f'kocoon_router_model_requests_total{{code="200",{labels}}} 1.0' in metrics
    assert f'kocoon_router_model_requests_total{{code="503",{labels}}} 1.0' in metrics
    assert f"kocoon_router_model_time_to_first_byte_seconds_count{{{labels}}} 2.0" in metrics
    assert f"kocoon_router_model_in_flight{{{labels}}} 0.0" in metrics
    router.table.delete_model(NAMESPACE, "chat")  # a deleted model's series go with it
    async with http.get(f"{router.admin_url}/metrics") as response:
        assert 'model="chat"' not in await response.text()


async def test_a_pooled_connection_the_engine_closed_is_retried_on_a_new_one(
    router: RunningRouter, engine_a: Engine
) -> None:
    engine_a.close_after_stream = True
    add_model(router.table, "chat", [engine_a.backend()])
    add_api_key(router.table, "key", KEY)
    client = sdk(router)
    for _ in range(4):
        stream = await client.chat.completions.create(model="chat", messages=[], stream=True)
        words = [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content]
        assert len(words) == engine_a.tokens
    # the first request after a stream met the closed connection and was resent; from then
    # on the router closes this engine's connections after each stream itself
    assert engine_a.dropped == 1
    assert engine_a.finished == 4
    assert router.router.proxy.models.closes_after_stream == {engine_a.address}


async def test_an_engine_failing_mid_stream_ends_the_stream_with_an_error_event(
    router: RunningRouter, engine_a: Engine
) -> None:
    engine_a.crash_after_first_token = True
    add_model(router.table, "chat", [engine_a.backend()])
    add_api_key(router.table, "key", KEY)
    stream = await sdk(router).chat.completions.create(model="chat", messages=[], stream=True)
    words: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            words.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match="failed mid-answer"):
        await read()
    assert words == ["alpha-0 "]


async def test_a_replica_that_accepts_no_connection_is_a_502(router: RunningRouter) -> None:
    from kocoon.router.table import ModelBackend

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    add_model(router.table, "chat", [ModelBackend(closed, ready=True)])
    add_api_key(router.table, "key", KEY)
    with pytest.raises(openai.APIStatusError) as unreachable:
        await chat(sdk(router), "chat")
    assert unreachable.value.status_code == 502
    assert unreachable.value.body["code"] == "backend_unreachable"  # type: ignore[index]


# --- a session's own /v1 paths stay the session's ------------------------------------------------


async def test_the_host_form_keeps_v1_paths_for_the_session(
    router: RunningRouter, backend: Backend, http: aiohttp.ClientSession
) -> None:
    add_session(router.table, "agent", backend, "session-token")
    headers = {**bearer("session-token"), "Host": f"agent.{NAMESPACE}.kocoon.test"}
    async with http.get(f"{router.url}/echo/v1/models", headers=headers) as response:
        assert response.status == 200
    async with http.get(f"{router.url}/v1/models", headers=headers) as response:
        assert response.status == 404  # the session's backend has no such path
        assert response.headers.get("Content-Type", "").startswith("text/plain")
