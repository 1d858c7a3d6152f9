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
POLICIES = ("round-robin", "least-in-flight")


# --- the replicas (their own process) ----------------------------------------------------------


def replicas_main(
    ports: list[int], slots: int, ms_per_char: float, tokens: int, token_ms: float
) -> None:
    async def serve() -> None:
        runners = []
        for i, port in enumerate(ports):
            runner = web.AppRunner(replica_app(f"r{i}", slots, ms_per_char, tokens, token_ms),
                                   access_log=None)  # fmt: skip
            await runner.setup()
            await web.TCPSite(runner, REPLICA_HOST, port).start()
            runners.append(runner)
        await asyncio.Event().wait()

    asyncio.run(serve())


def replica_app(
    name: str, slots: int, ms_per_char: float, tokens: int, token_ms: float
) -> web.Application:
    free = asyncio.Semaphore(slots)

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        prompt = sum(len(m.get("content", "")) for m in body["messages"])
        async with free:
            await asyncio.sleep(prompt * ms_per_char / 1000)  # prefill
            await asyncio.sleep(tokens * token_ms / 1000)  # decode
        return web.json_response(
            {
                "id": "chatcmpl-bench", "object": "chat.completion", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": name},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt // 4, "completion_tokens": tokens,
                          "total_tokens": prompt // 4 + tokens},
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

        def pick(self: Balancer, endpoints: Any, *, avoid: str | None = None) -> str:
            choices = tuple(e for e in endpoints if e != avoid) or tuple(endpoints)
            turn = turns.get(choices, 0)
            turns[choices] = turn + 1
            return choices[turn % len(choices)]

        Balancer.pick = pick  # type: ignore[method-assign]
    elif policy != "least-in-flight":
        raise SystemExit(f"unknown policy {policy}")
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
        f"{args.token_ms})"
    )
    async with process([sys.executable, "-c", code], REPLICA_HOST, ports[-1]):
        yield [f"{REPLICA_HOST}:{p}" for p in ports]


# --- the workload ------------------------------------------------------------------------------


def prompt_lengths(args: argparse.Namespace, rng: random.Random) -> list[int]:
    """Most prompts short (~300 chars), `long_share` long (~6,000): both log-normal."""
    out = []
    for _ in range(args.requests):
        median = args.long_chars if rng.random() < args.long_share else args.short_chars
        out.append(max(20, int(rng.lognormvariate(0, 0.5) * median)))
    return out


def service_ms(args: argparse.Namespace, chars: int) -> float:
    return chars * args.ms_per_char + args.tokens * args.token_ms


def schedule(args: argparse.Namespace) -> tuple[list[float], list[int], float]:
    """(send offsets in s, prompt lengths, arrival rate): Poisson at `load` times capacity."""
    rng = random.Random(args.seed)
    lengths = prompt_lengths(args, rng)
    mean_s = statistics.fmean(service_ms(args, n) for n in lengths) / 1000
    rate = args.load * REPLICAS * args.slots / mean_s
    offsets, t = [], 0.0
    for _ in lengths:
        t += rng.expovariate(rate)
        offsets.append(t)
    return offsets, lengths, rate


async def one(
    http: aiohttp.ClientSession, base: str, chars: int, at: float, start: float
) -> tuple[float, str]:
    await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
    body = {"model": SERVED, "messages": [{"role": "user", "content": "x" * chars}]}
    sent = time.perf_counter()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=headers) as response:
        answer = await response.json()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {answer}")
    return time.perf_counter() - sent, answer["choices"][0]["message"]["content"]


async def replay(base: str, offsets: list[float], lengths: list[int]) -> list[tuple[float, str]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(3):  # warm up: connections on both sides
            await one(http, base, 100, 0, time.perf_counter())
        start = time.perf_counter()
        return await asyncio.gather(
            *(one(http, base, n, at, start) for at, n in zip(offsets, lengths, strict=True))
        )


def summarize(samples: dict[str, list[tuple[float, str]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for policy, results in samples.items():
        latencies = [s for s, _ in results]
        per_replica: dict[str, int] = {}
        for _, replica in results:
            per_replica[replica] = per_replica.get(replica, 0) + 1
        out[policy] = {
            "p50_ms": statistics.median(latencies) * 1000,
            "p95_ms": percentile(latencies, 0.95) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "mean_ms": statistics.fmean(latencies) * 1000,
            "requests": len(latencies),
            "per_replica": dict(sorted(per_replica.items())),
        }
    rr = out["round-robin"]
    for policy in samples:
        if policy != "round-robin":
            out[f"p95_ratio_{policy}_vs_round-robin"] = out[policy]["p95_ms"] / rr["p95_ms"]
            out[f"p50_ratio_{policy}_vs_round-robin"] = out[policy]["p50_ms"] / rr["p50_ms"]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    offsets, lengths, rate = schedule(args)
    ideal = [service_ms(args, n) for n in lengths]
    print(
        f"{len(lengths)} requests at {rate:.1f}/s ({args.load:.0%} of capacity); service time "
        f"p50 {statistics.median(ideal):.0f} ms, p95 {percentile(ideal, 0.95):.0f} ms",
        flush=True,
    )
    samples: dict[str, list[tuple[float, str]]] = {p: [] for p in args.policies}
    async with replicas(args) as endpoints:
        for r in range(args.rounds):
            order = args.policies if r % 2 == 0 else args.policies[::-1]
            for policy in order:
                async with router_in_front(policy, endpoints) as base:
                    results = await replay(base, offsets, lengths)
                samples[policy].extend(results)
                p95 = percentile([s for s, _ in results], 0.95) * 1000
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
