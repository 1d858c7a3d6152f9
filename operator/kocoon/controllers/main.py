"""`kocoon operator`: run the kopf operator with every Kocoon controller registered."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

import kopf

from kocoon import log as kocoon_log


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kocoon operator", description=__doc__)
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or in-cluster)")
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    parser.add_argument(
        "--config",
        help="operator configuration file (YAML); default: built-in defaults",
    )
    parser.add_argument(
        "--peering",
        default=None,
        help="kopf peering name for high availability; default: standalone (one replica)",
    )
    parser.add_argument("--liveness-port", type=int, default=0, help="serve /healthz on this port")
    parser.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on this port")
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="serve the admission webhooks (TLS; see KOCOON_WEBHOOK_* for address and certificate)",
    )
    parser.add_argument("--log-format", choices=["json", "text"], default="json")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    kocoon_log.configure(
        json_format=args.log_format == "json", level=logging.DEBUG if args.verbose else logging.INFO
    )
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    if args.config:
        os.environ["KOCOON_CONFIG"] = args.config
    # Importing the controllers registers their handlers with kopf's default registry.
    from kocoon.controllers import context, registry

    if args.webhooks:
        from kocoon.webhooks import handlers

        os.environ[registry.WEBHOOKS_ENV] = "1"
        handlers.register(kopf.get_default_registry(), lambda: context.current().config)

    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="0.0.0.0")
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=int(os.environ.get("KOCOON_PEERING_PRIORITY", "0")),
            liveness_endpoint=liveness,
        )
    )
    return 0
