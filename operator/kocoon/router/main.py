"""`kocoon router`: flags, assembly of the parts, and the two listeners (data and admin)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from kocoon import contract
from kocoon.router.activity import (
    DEFAULT_INTERVAL_SECONDS,
    ActivityPublisher,
    ActivitySink,
    ActivitySnapshot,
    ActivityTracker,
)
from kocoon.router.auth import hash_token
from kocoon.router.balance import DEFAULT_LOAD_FACTOR, DEFAULT_PREFIX_CHARS, Policy
from kocoon.router.metrics import RouterMetrics
from kocoon.router.openai_format import DEFAULT_MAX_BODY_BYTES
from kocoon.router.proxy import (
    DEFAULT_SSE_HEARTBEAT_SECONDS,
    Proxy,
    ProxyConfig,
    admin_app,
)
from kocoon.router.table import (
    ApiKeyView,
    BackendView,
    ModelBackend,
    ModelView,
    RoutingTable,
    SessionView,
    TargetKey,
    TargetKind,
)
from kocoon.router.wake import (
    DEFAULT_QUEUE_PER_TARGET,
    DEFAULT_QUEUE_TOTAL,
    DEFAULT_WAKE_TIMEOUT_SECONDS,
    WakeCallbacks,
    WakeConfig,
    WakeControl,
    Waker,
)

log = logging.getLogger("kocoon.router")

SHUTDOWN_GRACE_SECONDS = 10.0

# LogRecord attributes that are not user-supplied `extra=` fields.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


@dataclass
class Router:
    """Every part of a router, wired; `serve()` runs them until cancelled."""

    table: RoutingTable
    tracker: ActivityTracker
    waker: Waker
    proxy: Proxy
    publisher: ActivityPublisher
    metrics: RouterMetrics
    ready: Callable[[], bool] = field(default=lambda: True)

    def app(self) -> web.Application:
        return self.proxy.app()

    def admin(self) -> web.Application:
        return admin_app(self.metrics, self.ready)


def assemble(
    table: RoutingTable,
    control: WakeControl,
    sink: ActivitySink,
    *,
    proxy_config: ProxyConfig | None = None,
    wake_config: WakeConfig | None = None,
    activity_interval: float = DEFAULT_INTERVAL_SECONDS,
    metrics: RouterMetrics | None = None,
) -> Router:
    metrics = metrics or RouterMetrics()
    tracker = ActivityTracker(interval=activity_interval)
    callbacks = WakeCallbacks(
        on_wake_requested=lambda key: metrics.wakes.labels(key.kind.value).inc(),
        on_held=metrics.held.set,
        on_released=lambda _key, waited: metrics.hold_duration.observe(waited),
    )
    waker = Waker(table, control, wake_config, callbacks)
    proxy = Proxy(table, tracker, waker, metrics, proxy_config)
    publisher = ActivityPublisher(tracker, sink, on_write=lambda _key: metrics.lease_writes.inc())
    for kind in TargetKind:
        metrics.targets.labels(kind.value).set_function(_counter(table, kind))
    return Router(table, tracker, waker, proxy, publisher, metrics)


def _counter(table: RoutingTable, kind: TargetKind) -> Callable[[], float]:
    if kind is TargetKind.SESSION:
        return lambda: float(len(table.sessions))
    if kind is TargetKind.MODEL:
        return lambda: float(len(table.models))
    return lambda: float(sum(1 for key in table.backends if key.kind is kind))


# --- static mode: a fixed table from a file, for development and benchmarks ----------------


class StaticControl:
    """Without a cluster nothing can wake a target; say so and let the hold time out."""

    async def request_wake(self, key: TargetKey) -> None:
        log.warning("static mode: no cluster to wake the target", extra={"target": str(key)})


class DiscardActivity:
    async def renew(self, key: TargetKey, snapshot: ActivitySnapshot) -> None:
        return None


def load_static(path: Path, table: RoutingTable) -> None:
    """Fill the table from a YAML file: `targets: [{kind, namespace, name, endpoint, token}]`.

    A target of kind agentsession gets a Sandbox of the same name behind it. A
    modeldeployment takes `servedModelName` (default: its name), one backend per `endpoint`,
    and `apiKey`: an API key of its namespace that may call it.
    """
    document = yaml.safe_load(path.read_text()) or {}
    for index, item in enumerate(document.get("targets") or []):
        where = f"{path}: targets[{index}]"
        try:
            kind = TargetKind(item.get("kind", TargetKind.SANDBOX.value))
            namespace, name = item["namespace"], item["name"]
        except (KeyError, ValueError) as error:
            raise SystemExit(
                f"{where}: needs namespace, name and kind one of "
                f"{[k.value for k in TargetKind]} ({error})"
            ) from error
        if kind is TargetKind.MODEL:
            _load_static_model(item, namespace, name, table)
            continue
        secret = f"{name}-token"
        token = item.get("token")
        if token:
            table.upsert_secret(namespace, secret, [hash_token(str(token))])
        view = BackendView(
            phase=str(item.get("phase", contract.PHASE_RUNNING)),
            ready=bool(item.get("ready", True)),
            endpoints=tuple(str(e) for e in _as_list(item.get("endpoint"))),
            token_secret=secret if token else None,
        )
        if kind is TargetKind.SESSION:
            table.upsert_backend(TargetKey(TargetKind.SANDBOX, namespace, name), view)
            table.upsert_session(namespace, name, SessionView(view.phase, name, view.token_secret))
        else:
            table.upsert_backend(TargetKey(kind, namespace, name), view)


def _load_static_model(
    item: dict[str, Any], namespace: str, name: str, table: RoutingTable
) -> None:
    served = str(item.get("servedModelName") or name)
    backends = tuple(
        ModelBackend(address=str(e), ready=True, pod=f"{name}-{i}")
        for i, e in enumerate(_as_list(item.get("endpoint")))
    )
    phase = str(item.get("phase", contract.PHASE_READY))
    table.upsert_model(namespace, name, ModelView(phase, served, backends))
    key = item.get("apiKey")
    if key:
        view = ApiKeyView(frozenset({hash_token(str(key))}), frozenset({served}))
        table.upsert_api_key(namespace, f"{name}-api-key", view)


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kocoon router", description=__doc__)
    p.add_argument("--listen", default="0.0.0.0:8080", help="data address, HOST:PORT")
    p.add_argument("--admin-listen", default="0.0.0.0:9090",
                   help="address of /healthz, /readyz and /metrics, HOST:PORT")  # fmt: skip
    p.add_argument("--domain", help="route {name}.{namespace}.DOMAIN to that AgentSession")
    p.add_argument("--kubeconfig", type=Path, help="default: in-cluster, then ~/.kube/config")
    p.add_argument("--namespace", action="append", default=[], dest="namespaces",
                   help="watch only this namespace (repeatable; default: all)")  # fmt: skip
    p.add_argument("--static", type=Path,
                   help="serve a fixed table from this YAML file, not a cluster")  # fmt: skip
    p.add_argument("--replica-id", default=socket.gethostname(),
                   help="holderIdentity written to activity Leases")  # fmt: skip
    p.add_argument("--activity-interval", type=float, default=DEFAULT_INTERVAL_SECONDS,
                   help="at most one Lease write per target per this many seconds")  # fmt: skip
    p.add_argument("--wake-timeout", type=float, default=DEFAULT_WAKE_TIMEOUT_SECONDS)
    p.add_argument("--queue-per-target", type=int, default=DEFAULT_QUEUE_PER_TARGET)
    p.add_argument("--queue-total", type=int, default=DEFAULT_QUEUE_TOTAL)
    p.add_argument("--sse-heartbeat", type=float, default=DEFAULT_SSE_HEARTBEAT_SECONDS)
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest model request body; larger ones get 413")  # fmt: skip
    p.add_argument("--balance", choices=[str(x) for x in Policy],
                   default=str(ProxyConfig.balance),
                   help="across a model's replicas: fewest open requests, or consistent hashing "
                   "with bounded load on the prompt's prefix (bench/bench_balance.py)")  # fmt: skip
    p.add_argument("--prefix-chars", type=int, default=DEFAULT_PREFIX_CHARS,
                   help="--balance prefix: how many of the prompt's first characters to hash",
                   )  # fmt: skip
    p.add_argument("--load-factor", type=float, default=DEFAULT_LOAD_FACTOR,
                   help="--balance prefix: a replica takes at most this times the mean load",
                   )  # fmt: skip
    p.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                   help="uvloop, if installed, measured no faster (docs/router.md)")  # fmt: skip
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def _hostport(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"{flag}: expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(args: argparse.Namespace) -> None:
    table = RoutingTable()
    background: list[Callable[[], Any]] = []
    control: WakeControl
    sink: ActivitySink
    ready: Callable[[], bool]
    api = None
    if args.static is not None:
        load_static(args.static, table)
        control, sink, ready = StaticControl(), DiscardActivity(), lambda: True
    else:
        from kocoon.router.kube import LeaseWriter, TableWatcher, load_config

        api = await load_config(args.kubeconfig)
        writer = LeaseWriter(api, args.replica_id, args.activity_interval)
        watcher = TableWatcher(api, table, tuple(args.namespaces))
        control, sink = writer, writer
        ready = lambda: watcher.ready  # noqa: E731
        background.append(watcher.run)
    router = assemble(
        table, control, sink,
        proxy_config=ProxyConfig(
            domain=args.domain, sse_heartbeat=args.sse_heartbeat,
            max_body_bytes=args.max_body_bytes, balance=Policy(args.balance),
            prefix_chars=args.prefix_chars, load_factor=args.load_factor,
        ),
        wake_config=WakeConfig(args.wake_timeout, args.queue_per_target, args.queue_total),
        activity_interval=args.activity_interval,
    )  # fmt: skip
    router.ready = ready
    router.proxy.synced = ready
    background.append(router.publisher.run)
    runners = []
    for app, address, flag in (
        (router.app(), args.listen, "--listen"),
        (router.admin(), args.admin_listen, "--admin-listen"),
    ):
        # handler_cancellation: a client that goes away cancels its handler, which closes the
        # connection to the backend (an engine stops generating for nobody).
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
            handler_cancellation=True,
        )  # fmt: skip
        await runner.setup()
        host, port = _hostport(address, flag)
        await web.TCPSite(runner, host, port, backlog=1024).start()
        runners.append(runner)
    # SIGTERM (a pod being stopped) ends serve() like Ctrl-C: listeners close, in-flight
    # requests get SHUTDOWN_GRACE_SECONDS to finish.
    main_task = asyncio.current_task()
    if main_task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    log.info("router serving", extra={"listen": args.listen, "admin": args.admin_listen})
    tasks = [asyncio.create_task(run()) for run in background]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for runner in runners:
            await runner.cleanup()
        if api is not None:
            await api.close()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    loop_factory = None
    if args.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError as error:
            raise SystemExit("--event-loop uvloop: install uvloop, or use asyncio") from error

        loop_factory = uvloop.new_event_loop
    with (
        contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError),
        asyncio.Runner(loop_factory=loop_factory) as runner,
    ):
        runner.run(serve(args))
    return 0
