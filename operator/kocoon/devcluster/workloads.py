"""Real servers where kwok pods are: each running sandbox pod on a simulated node gets a small
HTTP server on its loopback pod IP and container ports, so requests through the router reach
something real. State lives in the server's memory, like a workload's would: a pod that is
deleted and created again (filesystem hibernation) starts from zero.

    python -m kocoon.devcluster.workloads --kubeconfig K
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from kocoon.builders import names
from kocoon.devcluster.nodes import KWOK_ANNOTATION
from kocoon.kube.client import list_objects, new_api_client
from kocoon.kube.resources import NODE, POD

log = logging.getLogger("kocoon.devcluster.workloads")
POLL_SECONDS = 0.3


@dataclass
class Workload:
    """The stand-in for one pod's container: a counter in memory, served over HTTP."""

    pod: str
    uid: str
    boot_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    hits: int = 0
    runners: list[web.AppRunner] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._echo(request)
        if request.path.rstrip("/").endswith("/events"):
            return await self._events(request)
        body = {"pod": self.pod, "boot": self.boot_id, "hits": self.hits, "path": request.path}
        return web.json_response(body)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == web.WSMsgType.TEXT:
                self.hits += 1
                await socket.send_json({"pod": self.pod, "echo": message.data, "hits": self.hits})
        return socket

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(3):
            payload = json.dumps({"pod": self.pod, "event": index, "hits": self.hits})
            await response.write(f"data: {payload}\n\n".encode())
            await asyncio.sleep(0.1)
        return response


def wanted(
    pods: list[dict[str, Any]], kwok_nodes: set[str]
) -> dict[str, tuple[str, str, list[int]]]:
    """Pod uid → (name, IP, ports) for running sandbox pods on simulated nodes."""
    result = {}
    for pod in pods:
        status, spec, metadata = pod.get("status", {}), pod.get("spec", {}), pod["metadata"]
        if (
            status.get("phase") == "Running"
            and status.get("podIP")
            and spec.get("nodeName") in kwok_nodes
            and not metadata.get("deletionTimestamp")
        ):
            ports = [
                p["containerPort"] for c in spec.get("containers", []) for p in c.get("ports", [])
            ]
            result[metadata["uid"]] = (
                f"{metadata['namespace']}/{metadata['name']}",
                status["podIP"],
                ports,
            )
    return result


async def serve(workload: Workload, ip: str, ports: list[int]) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", workload.handle)
    for port in ports:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, ip, port).start()
        workload.runners.append(runner)


async def run(kubeconfig: str | None, stop: asyncio.Event) -> None:
    api = await new_api_client(kubeconfig)
    running: dict[str, Workload] = {}
    try:
        while not stop.is_set():
            nodes = await list_objects(api, NODE)
            kwok = {
                n["metadata"]["name"]
                for n in nodes
                if KWOK_ANNOTATION in (n["metadata"].get("annotations") or {})
            }
            pods = await list_objects(api, POD, label_selector=names.SANDBOX_LABEL)
            target = wanted(pods, kwok)
            for uid in set(running) - set(target):
                for runner in running.pop(uid).runners:
                    await runner.cleanup()
                log.info("stopped workload", extra={"uid": uid})
            for uid in set(target) - set(running):
                pod, ip, ports = target[uid]
                workload = Workload(pod=pod, uid=uid)
                try:
                    await serve(workload, ip, ports)
                except OSError as error:
                    log.warning("cannot serve %s on %s: %s", pod, ip, error)
                    continue
                running[uid] = workload
                log.info("serving %s on %s:%s", pod, ip, ports, extra={"pod": pod})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
    finally:
        for workload in running.values():
            for runner in workload.runners:
                await runner.cleanup()
        await api.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kocoon.devcluster.workloads")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(args.kubeconfig, stop)

    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
