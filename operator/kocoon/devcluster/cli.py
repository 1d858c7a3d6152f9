"""`kocoon dev up|down|status|env`: the local cluster from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from kocoon.devcluster import binaries, cluster, images, processes, realnode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kocoon dev", description=__doc__)
    parser.add_argument("--name", default=cluster.DEFAULT_NAME, help="cluster name (default: dev)")
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="start the local cluster (reuses it if it already runs)")
    up.add_argument(
        "--real-node",
        action="store_true",
        help="also run this machine as a real node (kubelet + containerd; setup/node.sh first)",
    )
    sub.add_parser("down", help="stop every process of the cluster and remove its files")
    status = sub.add_parser("status", help="show the cluster's components and nodes")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("env", help='print shell exports for the cluster (eval "$(kocoon dev env)")')
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.action == "up":
            handle = cluster.up(args.name, real_node=args.real_node)
            timings = handle.state.timings
            print(
                f"cluster {handle.name!r} ready at {handle.server} "
                f"({timings.get('total', 0):.1f} s)"
            )
            for line in cluster.env_lines(handle.state):
                print(line)
            return 0
        if args.action == "down":
            stopped = cluster.down(args.name)
            print(f"cluster {args.name!r} " + ("stopped" if stopped else "was not running"))
            return 0
        state = cluster.ClusterState.load(args.name)
        if state is None:
            print(f"cluster {args.name!r} is not running", file=sys.stderr)
            return 1
        if args.action == "env":
            print("\n".join(cluster.env_lines(state)))
            return 0
        report = cluster.Cluster(state).status()
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(f"cluster {report['name']}: {report['server']}")
            print(f"  kubeconfig: {report['kubeconfig']}")
            print(f"  pod network: {report['podNetwork']}")
            for name, condition in report["components"].items():
                print(f"  {name:<24} {condition}")
            print(f"  nodes: {', '.join(report['nodes'])}")
        return 0 if all(v == "running" for v in report["components"].values()) else 1
    except (
        binaries.MissingBinaryError,
        processes.ComponentFailedError,
        realnode.RealNodeError,
        images.ImageBuildError,
    ) as error:
        print(f"kocoon dev {args.action}: {error}", file=sys.stderr)
        return 1
