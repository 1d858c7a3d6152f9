"""Router benchmark: the same backend direct and through `kocoon router`, in one run.

    python bench/bench_router.py [--seconds 5] [--concurrency 32] [--loops uvloop,asyncio]

Three processes on loopback: the backend (aiohttp on uvloop, 127.0.0.2), the router (the
real `kocoon router --static` command), and this load generator. For each target it reports
- small requests, one at a time: p50/p99 latency; the router's "added" is the difference;
- small requests, `--concurrency` in flight: requests per second; the ratio router/direct;
- an SSE stream of many events: events per second and time to first event;
and, in process, the wake path's time split (request → wake asked, asked → Ready, Ready →
answer) with an in-memory control that brings the target up after `--wake-delay`.
Targets are measured in alternating rounds (medians reported) so that drift in the machine's
load hits all of them alike. Results are printed and written as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "bench-token"
BACKEND_HOST = "127.0.0.2"
ROUTER_HOST = "127.0.0.1"
SSE_EVENTS = 5000
DEFAULT_LOOPS = "asyncio,uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


# --- backend process ---------------------------------------------------------------------------


def backend_main(port: int) -> None:

    async def small(_: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    async def sse(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        count = int(request.query.get("n", str(SSE_EVENTS)))
        for i in range(count):
            await response.write(b"data: %d\n\n" % i)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/sse", sse)
    # The backend should not be the bottleneck: uvloop when installed.
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    web.run_app(app, host=BACKEND_HOST, port=port, access_log=None, print=None,
                loop=(loop_factory or asyncio.new_event_loop)())  # fmt: skip


# --- helpers -----------------------------------------------------------------------------------


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


async def wait_listening(host: str, port: int, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def process(args: list[str], host: str, port: int) -> AsyncIterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    # Starting a process once per phase; blocking for it is part of the setup, not measured.
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        await wait_listening(host, port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-metric median of several rounds of `measure()` results."""
    return {
        group: {metric: statistics.median(r[group][metric] for r in runs) for metric in values}
        for group, values in runs[0].items()
    }


# --- measurements ------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    base: str  # URL prefix up to the backend's own path


async def latency(http: aiohttp.ClientSession, target: Target, seconds: float) -> dict[str, float]:
    url, samples = f"{target.base}/small", []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        async with http.get(url, headers=headers) as response:
            await response.read()
            assert response.status == 200, response.status
        samples.append(time.perf_counter() - started)
    samples = samples[len(samples) // 10 :]  # drop the warm-up tenth
    return {
        "requests": len(samples),
        "p50_ms": percentile(samples, 0.5) * 1000,
        "p99_ms": percentile(samples, 0.99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000,
    }


async def throughput(
    http: aiohttp.ClientSession, target: Target, seconds: float, concurrency: int
) -> dict[str, float]:
    url, done = f"{target.base}/small", 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with http.get(url, headers=headers) as response:
                await response.read()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"requests": done, "rps": done / (time.perf_counter() - started)}


async def sse_stream(http: aiohttp.ClientSession, target: Target, rounds: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    firsts, rates = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        first = None
        events = 0
        async with http.get(f"{target.base}/sse?n={SSE_EVENTS}", headers=headers) as response:
            async for line in response.content:
                if line.startswith(b"data:"):
                    events += 1
                    if first is None:
                        first = time.perf_counter() - started
        assert events == SSE_EVENTS, events
        firsts.append(first or 0.0)
        rates.append(events / (time.perf_counter() - started))
    return {
        "first_event_ms": statistics.median(firsts) * 1000,
        "events_per_second": statistics.median(rates),
    }


async def measure(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        return {
            "latency": await latency(http, target, args.seconds),
            "throughput": await throughput(http, target, args.seconds, args.concurrency),
            "sse": await sse_stream(http, target, args.sse_rounds),
        }


# --- wake path ---------------------------------------------------------------------------------


async def wake_split(wake_delay: float, rounds: int) -> dict[str, float]:
    """Time split of a request that arrives at a sleeping target, in process."""
    sys.path.insert(0, str(ROOT / "operator"))
    from kocoon.router.activity import ActivitySnapshot
    from kocoon.router.auth import hash_token
    from kocoon.router.main import assemble
    from kocoon.router.table import BackendView, RoutingTable, TargetKey, TargetKind

    backend_port = free_port(BACKEND_HOST)
    backend = web.Application()

    async def small(_: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    backend.router.add_get("/small", small)
    backend_runner = web.AppRunner(backend, access_log=None)
    await backend_runner.setup()
    await web.TCPSite(backend_runner, BACKEND_HOST, backend_port).start()

    key = TargetKey(TargetKind.SANDBOX, "bench", "box")
    marks: dict[str, float] = {}
    table = RoutingTable()
    table.upsert_secret("bench", "tok", [hash_token(TOKEN)])

    def sleep() -> None:
        table.upsert_backend(key, BackendView("Hibernated", False, (), "tok"))

    def up() -> None:
        marks["ready"] = time.perf_counter()
        table.upsert_backend(
            key, BackendView("Running", True, (f"{BACKEND_HOST}:{backend_port}",), "tok")
        )

    class Control:
        async def request_wake(self, _key: TargetKey) -> None:
            marks["asked"] = time.perf_counter()
            asyncio.get_running_loop().call_later(wake_delay, up)

    class Sink:
        async def renew(self, _key: TargetKey, _s: ActivitySnapshot) -> None:
            return None

    router = assemble(table, Control(), Sink())
    runner = web.AppRunner(router.app(), access_log=None)
    await runner.setup()
    port = free_port(ROUTER_HOST)
    await web.TCPSite(runner, ROUTER_HOST, port).start()
    splits: dict[str, list[float]] = {
        "to_wake_request_ms": [],
        "waking_ms": [],
        "ready_to_answer_ms": [],
        "total_ms": [],
    }
    async with aiohttp.ClientSession() as http:
        for _ in range(rounds):
            sleep()
            started = time.perf_counter()
            url = f"http://{ROUTER_HOST}:{port}/sandboxes/bench/box/small"
            async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                await response.read()
                assert response.status == 200
            ended = time.perf_counter()
            splits["to_wake_request_ms"].append((marks["asked"] - started) * 1000)
            splits["waking_ms"].append((marks["ready"] - marks["asked"]) * 1000)
            splits["ready_to_answer_ms"].append((ended - marks["ready"]) * 1000)
            splits["total_ms"].append((ended - started) * 1000)
    await runner.cleanup()
    await backend_runner.cleanup()
    return {name: statistics.median(values) for name, values in splits.items()}


# --- main --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    backend_port = free_port(BACKEND_HOST)
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "aiohttp": aiohttp.__version__},
        "settings": vars(args) | {"sse_events": SSE_EVENTS},
        "targets": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        static = Path(tmp) / "targets.yaml"
        static.write_text(
            "targets:\n- {kind: sandbox, namespace: bench, name: box, "
            f"endpoint: '{BACKEND_HOST}:{backend_port}', token: {TOKEN}}}\n"
        )
        backend_cmd = [sys.executable, __file__, "--backend", str(backend_port)]
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(process(backend_cmd, BACKEND_HOST, backend_port))
            targets = [Target("direct", f"http://{BACKEND_HOST}:{backend_port}")]
            for loop in args.loops.split(","):
                port, admin = free_port(ROUTER_HOST), free_port(ROUTER_HOST)
                router_cmd = [
                    sys.executable, "-m", "kocoon.cli", "router", "--static", str(static),
                    "--listen", f"{ROUTER_HOST}:{port}", "--admin-listen", f"{ROUTER_HOST}:{admin}",
                    "--event-loop", loop, "--log-level", "WARNING",
                ]  # fmt: skip
                await stack.enter_async_context(process(router_cmd, ROUTER_HOST, port))
                targets.append(
                    Target(f"router-{loop}", f"http://{ROUTER_HOST}:{port}/sandboxes/bench/box")
                )
            # Rounds alternate the targets so drift in the machine's load hits all of them.
            rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            for _ in range(args.rounds):
                for target in targets:
                    rounds[target.name].append(await measure(target, args))
            results["rounds"] = rounds
            results["targets"] = {name: median_of(runs) for name, runs in rounds.items()}
    base = results["targets"]["direct"]
    for name, measured in results["targets"].items():
        if name == "direct":
            continue
        measured["added"] = {
            "p50_ms": measured["latency"]["p50_ms"] - base["latency"]["p50_ms"],
            "p99_ms": measured["latency"]["p99_ms"] - base["latency"]["p99_ms"],
            "throughput_ratio": measured["throughput"]["rps"] / base["throughput"]["rps"],
            "sse_rate_ratio": measured["sse"]["events_per_second"]
            / base["sse"]["events_per_second"],
            "sse_first_event_ms": measured["sse"]["first_event_ms"] - base["sse"]["first_event_ms"],
        }
    results["wake"] = await wake_split(args.wake_delay, args.wake_rounds)
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        f"{'target':<16} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'sse ev/s':>10} {'1st ev ms':>9}"
    ]
    for name, m in results["targets"].items():
        lines.append(
            f"{name:<16} {m['latency']['p50_ms']:>8.3f} {m['latency']['p99_ms']:>8.3f} "
            f"{m['throughput']['rps']:>9.0f} {m['sse']['events_per_second']:>10.0f} "
            f"{m['sse']['first_event_ms']:>9.2f}"
        )
    for name, m in results["targets"].items():
        if "added" in m:
            a = m["added"]
            lines.append(
                f"{name}: added p50 {a['p50_ms']:.3f} ms, p99 {a['p99_ms']:.3f} ms; "
                f"throughput {a['throughput_ratio']:.0%} of direct; SSE {a['sse_rate_ratio']:.0%}"
            )
    w = results["wake"]
    lines.append(
        f"wake: request→wake asked {w['to_wake_request_ms']:.2f} ms, "
        f"waking {w['waking_ms']:.1f} ms, Ready→answer {w['ready_to_answer_ms']:.2f} ms, "
        f"total {w['total_ms']:.1f} ms"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=3.0, help="per latency/throughput phase")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported")
    p.add_argument("--sse-rounds", type=int, default=3)
    p.add_argument("--loops", default=DEFAULT_LOOPS, help="router event loops to compare")
    p.add_argument("--wake-delay", type=float, default=0.5, help="simulated cluster wake time, s")
    p.add_argument("--wake-rounds", type=int, default=10)
    p.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.backend:
        backend_main(args.backend)
        return 0
    results = asyncio.run(run(args))
    print(report(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"router-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
