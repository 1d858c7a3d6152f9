"""Load-aware routing vs round-robin across 3 replicas, under skewed prompt lengths.

    python bench/bench_balance.py [--requests 1000 --load 0.7 --rounds 2 --slots 2]

Three processes on loopback: the replicas (3 OpenAI-format servers in one process), the router
(the real `kocoon router --static`, one ModelDeployment with the 3 replicas as backends) and
this load generator. Each replica works like an engine with `--slots` parallel sequences
(llama-server's `--parallel`): a request waits for a free slot, then takes a prefill time that
grows with its prompt's length (`--ms-per-char`) and a decode time (`--tokens` at
`--token-ms`). Prompts are skewed: most are short, `--long-share` of them are long (lengths
drawn from two log-normal bands), so a replica busy with a long prompt is slow for a while.

Requests arrive open-loop (Poisson) at `--load` times the replicas' capacity, from one seeded
schedule that every policy replays exactly. Policies, measured in alternating rounds in one
run so that drift in the machine's load hits both alike:
- `least-in-flight`: the router as it ships (`balance.py`);
- `round-robin`: the same router process with its pick replaced by plain turns (a baseline
  that exists only here).
Reported: p50/p95/p99 of latency (request sent → whole answer read) per policy, requests per
replica, and the ratio p95 least-in-flight / round-robin. Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
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

REPLICA_HOST = "127.0.0.2"
ROUTER_HOST = "127.0.0.1"
API_KEY = "sk-bench"
SERVED = "chat"
REPLICAS = 3
POLICIES = ("round-robin", "least-in-flight", "prefix")


# --- the replicas (their own process) ----------------------------------------------------------


def replicas_main(
    ports: list[int], slots: int, ms_per_char: float, tokens: int, token_ms: float, cache: int
) -> None:
    async def serve() -> None:
        runners = []
        for i, port in enumerate(ports):
            app = replica_app(f"r{i}", slots, ms_per_char, tokens, token_ms, cache)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, REPLICA_HOST, port).start()
            runners.append(runner)
        await asyncio.Event().wait()

    asyncio.run(serve())


def replica_app(
    name: str, slots: int, ms_per_char: float, tokens: int, token_ms: float, cache: int
) -> web.Application:
    """An engine's timing: `slots` sequences at once; prefill by the prompt's length, less a
    first message found in its prefix cache (the last `cache` first messages it read)."""
    free = asyncio.Semaphore(slots)
    cached: OrderedDict[str, None] = OrderedDict()

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        contents = [m.get("content", "") for m in body["messages"]]
        prompt = sum(map(len, contents))
        async with free:
            first = contents[0]
            hit = cache > 0 and len(contents) > 1 and first in cached
            if cache > 0 and len(contents) > 1:
                cached[first] = None
                cached.move_to_end(first)
                while len(cached) > cache:
                    cached.popitem(last=False)
            work = prompt - len(first) if hit else prompt
            await asyncio.sleep(work * ms_per_char / 1000)  # prefill
            await asyncio.sleep(tokens * token_ms / 1000)  # decode
        return web.json_response(
            {
                "id": "chatcmpl-bench", "object": "chat.completion", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": name},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt // 4, "completion_tokens": tokens,
                          "total_tokens": prompt // 4 + tokens, "cached": hit},
            }
        )  # fmt: skip

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


# --- the router, with the policy under test ----------------------------------------------------


def router_main(policy: str, argv: list[str]) -> None:
    from kocoon.cli import main as cli_main
    from kocoon.router.balance import Balancer

    if policy == "round-robin":
        turns: dict[tuple[str, ...], int] = {}

        def pick(
            self: Balancer, endpoints: Any, *, avoid: str | None = None, prefix: str | None = None
        ) -> str:
            choices = tuple(e for e in endpoints if e != avoid) or tuple(endpoints)
            turn = turns.get(choices, 0)
            turns[choices] = turn + 1
            return choices[turn % len(choices)]

        Balancer.pick = pick  # type: ignore[method-assign]
    else:
        argv = [*argv, "--balance", policy]
    sys.exit(cli_main(["router", *argv]))


@contextlib.asynccontextmanager
async def router_in_front(policy: str, endpoints: list[str]) -> AsyncIterator[str]:
    port, admin = free_port(ROUTER_HOST), free_port(ROUTER_HOST)
    with tempfile.TemporaryDirectory() as tmp:
        static = Path(tmp) / "targets.yaml"
        listed = ", ".join(f"'{e}'" for e in endpoints)
        static.write_text(
            "targets:\n"
            f"- {{kind: modeldeployment, namespace: bench, name: chat, servedModelName: {SERVED},"
            f" endpoint: [{listed}], apiKey: {API_KEY}}}\n"
        )
        argv = [
            "--static", str(static), "--listen", f"{ROUTER_HOST}:{port}",
            "--admin-listen", f"{ROUTER_HOST}:{admin}", "--log-level", "WARNING",
        ]  # fmt: skip
        code = (
            f"import sys; sys.path.insert(0, {str(HERE)!r}); "
            f"import bench_balance as b; b.router_main({policy!r}, {argv!r})"
        )
        async with process([sys.executable, "-c", code], ROUTER_HOST, port):
            yield f"http://{ROUTER_HOST}:{port}"


@contextlib.asynccontextmanager
async def replicas(args: argparse.Namespace) -> AsyncIterator[list[str]]:
    ports = [free_port(REPLICA_HOST) for _ in range(REPLICAS)]
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_balance as b; "
        f"b.replicas_main({ports!r}, {args.slots}, {args.ms_per_char}, {args.tokens}, "
        f"{args.token_ms}, {args.cache})"
    )
    async with process([sys.executable, "-c", code], REPLICA_HOST, ports[-1]):
        yield [f"{REPLICA_HOST}:{p}" for p in ports]


# --- the workload ------------------------------------------------------------------------------


def _length(args: argparse.Namespace, rng: random.Random) -> int:
    """Most prompts short (~`short_chars`), `long_share` long (~`long_chars`): log-normal."""
    median = args.long_chars if rng.random() < args.long_share else args.short_chars
    return max(20, int(rng.lognormvariate(0, 0.5) * median))


def prompts(args: argparse.Namespace, rng: random.Random) -> list[list[str]]:
    """Each request's messages. Without sessions: one message of a skewed length, unique.
    With `--sessions N`: N conversations, each with its own context of a skewed length (its
    first message) and a short new turn per request; each request from a random one."""
    if not args.sessions:
        return [[f"{i:06d} " + "x" * _length(args, rng)] for i in range(args.requests)]
    contexts = [f"session {i:04d} " + "c" * _length(args, rng) for i in range(args.sessions)]
    return [
        [rng.choice(contexts), "t" * max(20, int(rng.lognormvariate(0, 0.5) * args.turn_chars))]
        for _ in range(args.requests)
    ]


def service_ms(args: argparse.Namespace, chars: int) -> float:
    return chars * args.ms_per_char + args.tokens * args.token_ms


def schedule(args: argparse.Namespace) -> tuple[list[float], list[list[str]], float]:
    """(send offsets in s, prompts, arrival rate): Poisson at `load` times the capacity
    without any prefix cache hit."""
    rng = random.Random(args.seed)
    messages = prompts(args, rng)
    mean_s = statistics.fmean(service_ms(args, sum(map(len, m))) for m in messages) / 1000
    rate = args.load * REPLICAS * args.slots / mean_s
    offsets, t = [], 0.0
    for _ in messages:
        t += rng.expovariate(rate)
        offsets.append(t)
    return offsets, messages, rate


async def one(
    http: aiohttp.ClientSession, base: str, messages: list[str], at: float, start: float
) -> tuple[float, str, bool]:
    await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
    body = {"model": SERVED, "messages": [{"role": "user", "content": m} for m in messages]}
    sent = time.perf_counter()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=headers) as response:
        answer = await response.json()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {answer}")
    replica = answer["choices"][0]["message"]["content"]
    return time.perf_counter() - sent, replica, bool(answer["usage"].get("cached"))


async def replay(
    base: str, offsets: list[float], messages: list[list[str]]
) -> list[tuple[float, str, bool]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(3):  # warm up: connections on both sides
            await one(http, base, ["warm-up"], 0, time.perf_counter())
        start = time.perf_counter()
        return await asyncio.gather(
            *(one(http, base, m, at, start) for at, m in zip(offsets, messages, strict=True))
        )


def summarize(samples: dict[str, list[tuple[float, str, bool]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for policy, results in samples.items():
        latencies = [s for s, _, _ in results]
        per_replica: dict[str, int] = {}
        for _, replica, _ in results:
            per_replica[replica] = per_replica.get(replica, 0) + 1
        out[policy] = {
            "p50_ms": statistics.median(latencies) * 1000,
            "p95_ms": percentile(latencies, 0.95) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "mean_ms": statistics.fmean(latencies) * 1000,
            "requests": len(latencies),
            "prefix_cache_hits": sum(hit for _, _, hit in results) / len(results),
            "per_replica": dict(sorted(per_replica.items())),
        }
    rr = out["round-robin"]
    for policy in samples:
        if policy != "round-robin":
            out[f"p95_ratio_{policy}_vs_round-robin"] = out[policy]["p95_ms"] / rr["p95_ms"]
            out[f"p50_ratio_{policy}_vs_round-robin"] = out[policy]["p50_ms"] / rr["p50_ms"]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    offsets, messages, rate = schedule(args)
    ideal = [service_ms(args, sum(map(len, m))) for m in messages]
    print(
        f"{len(messages)} requests at {rate:.1f}/s ({args.load:.0%} of capacity); service time "
        f"p50 {statistics.median(ideal):.0f} ms, p95 {percentile(ideal, 0.95):.0f} ms",
        flush=True,
    )
    samples: dict[str, list[tuple[float, str, bool]]] = {p: [] for p in args.policies}
    async with replicas(args) as endpoints:
        for r in range(args.rounds):
            order = args.policies if r % 2 == 0 else args.policies[::-1]
            for policy in order:
                async with router_in_front(policy, endpoints) as base:
                    results = await replay(base, offsets, messages)
                samples[policy].extend(results)
                p95 = percentile([s for s, _, _ in results], 0.95) * 1000
                print(f"round {r + 1} {policy}: p95 {p95:.0f} ms", flush=True)
    summary = {"rate_per_s": rate, **summarize(samples)}
    print(json.dumps(summary, indent=1), flush=True)
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=1000, help="per policy per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--load", type=float, default=0.7, help="arrival rate / replicas' capacity")
    p.add_argument("--slots", type=int, default=2, help="parallel sequences per replica")
    p.add_argument("--ms-per-char", type=float, default=0.05, help="prefill cost")
    p.add_argument("--tokens", type=int, default=16, help="decoded tokens per answer")
    p.add_argument("--token-ms", type=float, default=1.0)
    p.add_argument("--short-chars", type=int, default=300)
    p.add_argument("--long-chars", type=int, default=6000)
    p.add_argument("--long-share", type=float, default=0.15)
    p.add_argument("--sessions", type=int, default=0,
                   help="conversations sharing a context (0: every prompt its own)")  # fmt: skip
    p.add_argument("--turn-chars", type=int, default=200, help="--sessions: a new turn's length")
    p.add_argument("--cache", type=int, default=0,
                   help="contexts each replica keeps in its prefix cache (0: none)")  # fmt: skip
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--policies", type=lambda s: tuple(s.split(",")), default=POLICIES)
    args = p.parse_args()
    results = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"balance-{time.strftime('%Y%m%dT%H%M%S')}.json"
    meta = {"python": platform.python_version(), "machine": platform.machine(), "args": vars(args)}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
