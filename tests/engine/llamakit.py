"""Helpers of the engine tests: the served name and a greedy question through the `openai` SDK."""

from __future__ import annotations

from openai import OpenAI

SERVED_NAME = "smollm2-135m"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
MAX_TOKENS = 32


def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="not-checked", max_retries=0, timeout=60)


def ask(base_url: str) -> str:
    """The greedy (temperature 0) answer to QUESTION."""
    with client(base_url) as openai:
        answer = openai.chat.completions.create(
            model=SERVED_NAME, messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0, seed=7
        )
    content = answer.choices[0].message.content
    assert content is not None
    return content


def ask_streamed(base_url: str) -> tuple[list[str], str | None]:
    """The streamed greedy answer's text pieces and the finish reason of its last choice."""
    pieces: list[str] = []
    finish: str | None = None
    with (
        client(base_url) as openai,
        openai.chat.completions.create(
            model=SERVED_NAME,
            messages=QUESTION,
            max_tokens=MAX_TOKENS,
            temperature=0,
            seed=7,
            stream=True,
        ) as stream,
    ):
        for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
    return pieces, finish
