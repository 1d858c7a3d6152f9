"""Waking the CPU engine: cold start vs CRIU restore vs the engine's own idle sleep, to the
first streamed token, in one run.

    sudo .venv/bin/python bench/bench_model_wake.py [--repeat 3] [--max-tokens 16]

The engine is llama.cpp's llama-server with SmolLM2-135M-Instruct Q4_1 (setup/llamacpp.sh),
on loopback. Per round, the same question (greedy, streamed through the `openai` SDK):
- coldStart:  spawn the server → `/health` 200 (model loaded) → first streamed token;
- checkpoint: a loaded, warmed server dumped by the agent's process driver (CRIU), then
              `criu restore` → `/health` 200 → first streamed token;
- engineSleep: a server started with `--sleep-idle-seconds 1`, asleep (`/props`
              is_sleeping), then request → first streamed token (the engine reloads weights).
The model file stays in the page cache across all of them (nothing drops caches on a shared
machine), so coldStart is its best case. Prints a table with the split and the ratios against
coldStart in the same run, and writes JSON to bench/results/. Needs root and CRIU
(setup/criu.sh). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from openai import OpenAI

from kocoon.agent.drivers.base import CheckpointTarget, RestoreTarget, Unsupported
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.drivers.process import ProcessDriver
from kocoon.agent.models import SandboxRef
from kocoon.devcluster import engines
from kocoon.devcluster.processes import free_port

RESULTS = Path(__file__).resolve().parent / "results"
SERVED_NAME = "smollm2-135m"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
REF = SandboxRef(namespace="bench", name="smollm2")


@dataclass
class Row:
    strategy: str
    run: int
    ready_s: float  # spawn/restore/request → the engine can answer (health 200, or awake)
    first_token_s: float  # from ready to the first streamed token
    total_s: float  # the wake's start → first token (ready + first_token)
    text: str
    restore_s: float | None = None  # checkpoint: `criu restore` itself
    checkpoint_s: float | None = None
    image_bytes: int | None = None


def first_token(base_url: str, max_tokens: int) -> tuple[float, str]:
    """Seconds to the first streamed content token, and the whole streamed text."""
    started = time.monotonic()
    first: float | None = None
    pieces: list[str] = []
    with (
        OpenAI(base_url=f"{base_url}/v1", api_key="-", max_retries=0, timeout=120) as client,
        client.chat.completions.create(
            model=SERVED_NAME,
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0,
            seed=7,
            stream=True,
        ) as stream,
    ):
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    if first is None:
                        first = time.monotonic() - started
                    pieces.append(choice.delta.content)
    if first is None:
        raise RuntimeError("the stream carried no token")
    return first, "".join(pieces)


def cold(work: Path, run: int, max_tokens: int) -> tuple[Row, engines.LocalServer]:
    """A cold start; the server is left running (loaded and warm) for the checkpoint round."""
    started = time.monotonic()
    server = engines.start_local(
        work / f"cold-{run}.log", port=free_port(), served_name=SERVED_NAME
    )
    ready = time.monotonic() - started
    token, text = first_token(server.base_url, max_tokens)
    return Row("coldStart", run, ready, token, ready + token, text), server


async def checkpoint(
    driver: ProcessDriver, server: engines.LocalServer, work: Path, run: int, max_tokens: int
) -> Row:
    images, scratch = work / f"images-{run}", work / f"criu-{run}"
    images.mkdir()
    scratch.mkdir()
    first_token(server.base_url, max_tokens)  # warm: the checkpoint holds a served engine
    engines.wait_connections_closed(server.pid)
    started = time.monotonic()
    dumped = await driver.checkpoint(CheckpointTarget(REF, pid=server.pid), images, scratch)
    checkpoint_s = time.monotonic() - started
    if server.process is not None:
        server.process.wait(10)
    image_bytes = sum(p.stat().st_size for p in images.rglob("*") if p.is_file())

    started = time.monotonic()
    await driver.restore(RestoreTarget(REF, dict(dumped.target)), images, scratch)
    restore_s = time.monotonic() - started
    engines.wait_healthy(server.base_url, timeout=60)
    ready = time.monotonic() - started
    token, text = first_token(server.base_url, max_tokens)
    server.stop()
    return Row(
        "checkpoint", run, ready, token, ready + token, text, restore_s, checkpoint_s, image_bytes
    )


def engine_sleep(work: Path, run: int, max_tokens: int) -> Row:
    with engines.local_server(
        work / f"sleep-{run}.log", port=free_port(), served_name=SERVED_NAME, sleep_idle_seconds=1
    ) as server:
        first_token(server.base_url, max_tokens)
        deadline = time.monotonic() + 60
        while engines.http_json(f"{server.base_url}/props")[1].get("is_sleeping") is not True:
            if time.monotonic() > deadline:
                raise RuntimeError("the engine never went to sleep")
            time.sleep(0.1)
        token, text = first_token(server.base_url, max_tokens)
    # Asleep it stays healthy; the wake (reloading the weights) is inside the request, so its
    # "ready" is not separable from the first token.
    return Row("engineSleep", run, 0.0, token, token, text)


def median(rows: list[Row], strategy: str, field: str) -> float:
    values = [getattr(r, field) for r in rows if r.strategy == strategy]
    return statistics.median(v for v in values if v is not None)


def report(rows: list[Row]) -> dict[str, float]:
    cold_total = median(rows, "coldStart", "total_s")
    print(f"\n{'strategy':<12} {'ready':>8} {'→ 1st token':>12} {'total':>8} {'vs cold':>8}")
    ratios = {}
    for strategy in ("coldStart", "checkpoint", "engineSleep"):
        total = median(rows, strategy, "total_s")
        ratios[strategy] = total / cold_total
        print(
            f"{strategy:<12} {median(rows, strategy, 'ready_s'):>7.3f}s"
            f" {median(rows, strategy, 'first_token_s'):>11.3f}s {total:>7.3f}s"
            f" {ratios[strategy]:>7.2f}x"
        )
    print(
        f"checkpoint: dump {median(rows, 'checkpoint', 'checkpoint_s'):.3f} s, criu restore "
        f"{median(rows, 'checkpoint', 'restore_s'):.3f} s, images "
        f"{median(rows, 'checkpoint', 'image_bytes') / 1e6:.0f} MB "
        f"(model file {engines.SMOLLM2_SIZE / 1e6:.0f} MB, mmapped, not copied)"
    )
    return ratios


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_model_wake: CRIU needs root", file=sys.stderr)
        return 2
    driver = ProcessDriver(CriuTool())
    availability = await driver.probe()
    if isinstance(availability, Unsupported):
        print(f"bench_model_wake: {availability.reason}", file=sys.stderr)
        return 2
    try:
        engines.llama_server()
        engines.smollm2_model()
    except engines.EngineNotInstalledError as error:
        print(f"bench_model_wake: {error}", file=sys.stderr)
        return 2

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kocoon-bench-wake-") as tmp:
        work = Path(tmp)
        for run in range(args.repeat):
            row, server = cold(work, run, args.max_tokens)
            rows.append(row)
            rows.append(await checkpoint(driver, server, work, run, args.max_tokens))
            rows.append(engine_sleep(work, run, args.max_tokens))
            for r in rows[-3:]:
                print(f"run {run} {r.strategy:<12} total {r.total_s:.3f} s")
    texts = {r.text for r in rows}
    if len(texts) != 1:
        print(f"bench_model_wake: answers differ between strategies: {texts}", file=sys.stderr)
        return 1
    ratios = report(rows)
    print(f"answer (all strategies, all runs): {texts.pop()!r}")

    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"model-wake-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "kernel": platform.release(),
                    "arch": platform.machine(),
                    "cpus": os.cpu_count(),
                },
                "engine": f"llama-server (llama-cpp-python {engines.LLAMA_CPP_PYTHON_VERSION})",
                "model": engines.SMOLLM2_FILE,
                "ratios_vs_cold": ratios,
                "rows": [asdict(r) for r in rows],
            },
            indent=2,
        )
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
