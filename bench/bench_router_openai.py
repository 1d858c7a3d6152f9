"""Router overhead on a streamed chat completion: the engine direct vs through `kocoon router`.

    python bench/bench_router_openai.py [--engine auto|llama|synthetic] [--rounds 5 --requests 10]

The same streamed `POST /v1/chat/completions` (`stream: true`) is sent, one at a time, to the
engine directly and through the real `kocoon router --static` process (OpenAI endpoint:
routing by `model`, API-key auth, least in-flight pick, chunk-by-chunk relay), alternating
in rounds so that drift in the machine's load hits both alike. Per request:
- time to first token: request sent → first `data:` event with content;
- tokens per second after the first: (tokens - 1) / (last token - first token).
Reported: p50 of each, the router's added TTFT (p50 routed - p50 direct) and the tokens/s
ratio routed/direct. For reference the synthetic engine is also reached as a Sandbox
(`/sandboxes/...`, the router's plain proxy path), which shows what the model path itself
(caller auth, body parse, replica pick) adds over proxying.

Engines: `llama` is llama-server with SmolLM2-135M (setup/llamacpp.sh), the engine the
project runs for real; `synthetic` is an aiohttp server that streams `--tokens` chunks, one every
`--token-interval` (1 ms: ten times SmolLM2's rate here; 0: as fast as it can, the worst case
for the router, with no generation time to hide its work behind);
`auto` runs llama when it is installed and synthetic in any case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_router import (  # noqa: E402 - the sibling benchmark's process helpers
    RESULTS,
    ROOT,
    free_port,
    percentile,
    process,
)

ENGINE_HOST = "127.0.0.2"
ROUTER_HOST = "127.0.0.1"
API_KEY = "sk-bench"
SERVED = "smollm2"
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


# --- the synthetic engine (its own process) ------------------------------------------------------


def synthetic_main(port: int, tokens: int, interval: float) -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        count = int(body.get("max_tokens") or tokens)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(count):
            if i and interval:
                await asyncio.sleep(interval)
            event = {
                "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}],
            }  # fmt: skip
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host=ENGINE_HOST, port=port, access_log=None, print=None)


# --- one streamed request ------------------------------------------------------------------------


async def streamed(
    http: aiohttp.ClientSession, base: str, key: str, max_tokens: int
) -> tuple[float, float, int]:
    """(time to first token, tokens/s after the first, tokens) of one streamed completion."""
    body = {
        "model": SERVED, "messages": PROMPT, "stream": True, "max_tokens": max_tokens,
        "temperature": 0, "seed": 1,
    }  # fmt: skip
    started = time.perf_counter()
    first = last = 0.0
    count = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{base}: {response.status} {await response.text()}")
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if not (choices[0].get("delta") or {}).get("content"):
                continue
            last = time.perf_counter()
            if count == 0:
                first = last
            count += 1
    rate = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return first - started, rate, count


async def measure(
    targets: dict[str, tuple[str, str]],
    rounds: int,
    requests: int,
    max_tokens: int,
    fresh_connections: bool = False,
) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {
        name: {"ttft": [], "rate": []} for name in targets
    }
    # llama-server closes its connection after every streamed answer (while announcing
    # keep-alive), so its clients open one per request: so does this one, for both targets.
    connector = aiohttp.TCPConnector(force_close=fresh_connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        for base, key in targets.values():  # warm up connections and caches
            await streamed(http, base, key, max_tokens)
        for _ in range(rounds):
            for name, (base, key) in targets.items():
                for _ in range(requests):
                    ttft, rate, _count = await streamed(http, base, key, max_tokens)
                    samples[name]["ttft"].append(ttft)
                    samples[name]["rate"].append(rate)
    return samples


@contextlib.asynccontextmanager
async def router_in_front(engine_address: str) -> AsyncIterator[str]:
    port, admin = free_port(ROUTER_HOST), free_port(ROUTER_HOST)
    with tempfile.TemporaryDirectory() as tmp:
        static = Path(tmp) / "targets.yaml"
        static.write_text(
            "targets:\n"
            f"- {{kind: modeldeployment, namespace: bench, name: chat, servedModelName: {SERVED},"
            f" endpoint: '{engine_address}', apiKey: {API_KEY}}}\n"
            # the same engine as a Sandbox: the router's plain proxy path, for reference
            f"- {{kind: sandbox, namespace: bench, name: engine, endpoint: '{engine_address}',"
            f" token: {API_KEY}}}\n"
        )
        args = [
            sys.executable, "-m", "kocoon.cli", "router", "--static", str(static),
            "--listen", f"{ROUTER_HOST}:{port}", "--admin-listen", f"{ROUTER_HOST}:{admin}",
            "--log-level", "WARNING",
        ]  # fmt: skip
        async with process(args, ROUTER_HOST, port):
            yield f"http://{ROUTER_HOST}:{port}"


@contextlib.asynccontextmanager
async def synthetic_engine(tokens: int, interval: float) -> AsyncIterator[str]:
    port = free_port(ENGINE_HOST)
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); "
        f"import bench_router_openai as b; b.synthetic_main({port}, {tokens}, {interval})"
    )
    async with process([sys.executable, "-c", code], ENGINE_HOST, port):
        yield f"{ENGINE_HOST}:{port}"


@contextlib.asynccontextmanager
async def llama_engine() -> AsyncIterator[str]:
    sys.path.insert(0, str(ROOT / "operator"))
    from kocoon.devcluster import engines

    port = free_port("127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "llama-server.log"
        server = await asyncio.to_thread(
            engines.start_local, log, port=port, served_name=SERVED, parallel=1
        )
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await asyncio.to_thread(server.stop)


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    direct, routed = samples["direct"], samples["router"]
    out: dict[str, Any] = {}
    for name, s in samples.items():
        out[name] = {
            "ttft_p50_ms": statistics.median(s["ttft"]) * 1000,
            "ttft_p90_ms": percentile(s["ttft"], 0.9) * 1000,
            "tokens_per_s_p50": statistics.median(s["rate"]),
            "requests": len(s["ttft"]),
        }
    out["added_ttft_p50_ms"] = out["router"]["ttft_p50_ms"] - out["direct"]["ttft_p50_ms"]
    if "proxy-path" in out:  # what the model path (caller auth, body parse, pick) adds
        out["model_path_vs_proxy_path_ttft_p50_ms"] = (
            out["router"]["ttft_p50_ms"] - out["proxy-path"]["ttft_p50_ms"]
        )
    out["tokens_per_s_ratio"] = statistics.median(routed["rate"]) / statistics.median(
        direct["rate"]
    )
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    engines_to_run = [args.engine] if args.engine != "auto" else ["llama", "synthetic"]
    for engine in engines_to_run:
        if engine == "llama":
            sys.path.insert(0, str(ROOT / "operator"))
            from kocoon.devcluster import engines as installed

            if not installed.installed():
                print(f"llama: skipped ({installed.SETUP_HINT})", flush=True)
                continue
            upstream = llama_engine()
            max_tokens = args.llama_tokens
        else:
            upstream = synthetic_engine(args.tokens, args.token_interval)
            max_tokens = args.tokens
        async with upstream as address, router_in_front(address) as router:
            targets = {"direct": (f"http://{address}", "unused"), "router": (router, API_KEY)}
            if engine == "synthetic":
                # Not against llama-server: the plain proxy path resends only refused
                # connections, and llama-server closes its own after every stream.
                targets["proxy-path"] = (f"{router}/sandboxes/bench/engine", API_KEY)
            samples = await measure(
                targets, args.rounds, args.requests, max_tokens, fresh_connections=engine == "llama"
            )
        results[engine] = {"max_tokens": max_tokens, **summarize(samples)}
        print(f"{engine}: {json.dumps(results[engine], indent=1)}", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--engine", choices=("auto", "llama", "synthetic"), default="auto")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=10, help="per target per round")
    p.add_argument("--tokens", type=int, default=200, help="synthetic engine: tokens per answer")
    p.add_argument(
        "--token-interval", type=float, default=0.001,
        help="synthetic engine: seconds between tokens (0: as fast as it can)",
    )  # fmt: skip
    p.add_argument("--llama-tokens", type=int, default=64, help="llama: max_tokens per answer")
    args = p.parse_args()
    results = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"router-openai-{time.strftime('%Y%m%dT%H%M%S')}.json"
    meta = {"python": platform.python_version(), "machine": platform.machine(), "args": vars(args)}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
