"""llama-server, built by setup/llamacpp.sh, serving SmolLM2-135M on loopback: the OpenAI API
through the `openai` SDK, streaming, health while loading, and its own idle sleep."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from llamakit import MAX_TOKENS, QUESTION, SERVED_NAME, ask, ask_streamed, client

from kocoon.devcluster import engines
from kocoon.devcluster.processes import free_port

pytestmark = pytest.mark.engine


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_health_is_200_once_loaded_and_models_lists_the_served_name(
    server: engines.LocalServer,
) -> None:
    status, body = engines.http_json(f"{server.base_url}/health")
    assert (status, body.get("status")) == (200, "ok")
    with client(server.base_url) as openai:
        assert [model.id for model in openai.models.list()] == [SERVED_NAME]


def test_chat_completion_gives_a_real_answer(server: engines.LocalServer) -> None:
    with client(server.base_url) as openai:
        answer = openai.chat.completions.create(
            model=SERVED_NAME, messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0, seed=7
        )
    choice = answer.choices[0]
    assert choice.finish_reason in {"stop", "length"}
    assert choice.message.role == "assistant"
    assert "Paris" in (choice.message.content or "")
    assert answer.usage is not None
    assert 0 < answer.usage.completion_tokens <= MAX_TOKENS
    assert answer.usage.prompt_tokens > 5


def test_streamed_chat_completion_arrives_in_pieces_and_ends(server: engines.LocalServer) -> None:
    pieces, finish = ask_streamed(server.base_url)
    assert len(pieces) >= 3, pieces
    assert finish in {"stop", "length"}
    # Greedy decoding: the stream carries exactly the text of the non-streamed answer.
    assert "".join(pieces) == ask(server.base_url)


def test_idle_sleep_unloads_and_the_next_request_answers(
    engine_installed: None, tmp_path: Path
) -> None:
    with engines.local_server(
        tmp_path / "server.log",
        port=free_port(),
        served_name=SERVED_NAME,
        sleep_idle_seconds=1,
    ) as server:
        awake = ask(server.base_url)
        loaded_rss = rss_bytes(server.pid)
        deadline = time.monotonic() + 30
        props: dict[str, object] = {}
        while time.monotonic() < deadline:
            _, props = engines.http_json(f"{server.base_url}/props")
            if props.get("is_sleeping") is True:
                break
            time.sleep(0.2)
        assert props.get("is_sleeping") is True, props
        # Asleep, the weights are unloaded: most of the memory is given back.
        assert rss_bytes(server.pid) < loaded_rss / 2, (rss_bytes(server.pid), loaded_rss)
        # Asleep, it still reports healthy: sleep is not a failure to restart on.
        assert engines.http_json(f"{server.base_url}/health")[0] == 200
        assert ask(server.base_url) == awake
        _, props = engines.http_json(f"{server.base_url}/props")
        assert props.get("is_sleeping") is False


def test_corrupt_model_fails_fast_with_the_engine_output(
    engine_installed: None, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(4096))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited before") as raised:
        engines.start_local(tmp_path / "server.log", port=free_port(), model=bad, timeout=30)
    assert time.monotonic() - started < 10
    assert "broken.gguf" in str(raised.value)


@pytest.mark.unit
def test_missing_engine_and_model_name_the_setup_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOCOON_CACHE", str(tmp_path))
    monkeypatch.delenv("KOCOON_BIN_DIR", raising=False)
    with pytest.raises(engines.EngineNotInstalledError, match=r"setup/llamacpp\.sh"):
        engines.llama_server()
    with pytest.raises(engines.EngineNotInstalledError, match=r"setup/llamacpp\.sh"):
        engines.smollm2_model()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / engines.SMOLLM2_FILE).write_bytes(b"short")
    with pytest.raises(engines.EngineNotInstalledError, match="has 5 bytes, expected 98362432"):
        engines.smollm2_model()
    assert not engines.installed()


@pytest.mark.unit
def test_server_args_carry_the_served_name_address_and_sleep() -> None:
    args = engines.server_args(
        "/models/m.gguf", served_name="m", host="0.0.0.0", port=8000, sleep_idle_seconds=30
    )

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert value("--model") == "/models/m.gguf"
    assert value("--alias") == "m"
    assert (value("--host"), value("--port")) == ("0.0.0.0", "8000")
    assert value("--sleep-idle-seconds") == "30"
    assert "--sleep-idle-seconds" not in engines.server_args("m.gguf", served_name="m")


def test_open_connections_sees_a_client_until_it_closes(server: engines.LocalServer) -> None:
    engines.wait_connections_closed(server.pid)
    assert engines.open_connections(server.pid) == 0
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(64).startswith(b"HTTP/1.1 200")
        assert engines.open_connections(server.pid) == 1
    engines.wait_connections_closed(server.pid)
    assert engines.open_connections(server.pid) == 0
