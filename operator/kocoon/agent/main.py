"""`kocoon agent`: the node agent's HTTPS server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from kocoon import log as logsetup
from kocoon.agent import remote, tls
from kocoon.agent.api import build_app
from kocoon.agent.auth import (
    AllOf,
    Authenticator,
    BearerTokenAuthenticator,
    ClientCertificateAuthenticator,
)
from kocoon.agent.drivers.base import Driver
from kocoon.agent.drivers.containerd import DEFAULT_CRI_RUNC_ROOT, ContainerdDriver
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.drivers.filesystem import FilesystemDriver
from kocoon.agent.drivers.gvisor import GvisorDriver
from kocoon.agent.drivers.kubelet import (
    DEFAULT_CHECKPOINT_DIR,
    DEFAULT_KUBELET_URL,
    KubeletConfig,
    KubeletDriver,
)
from kocoon.agent.drivers.process import ProcessDriver
from kocoon.agent.drivers.runc import DEFAULT_CRUN_ROOT, DEFAULT_RUNC_ROOT, CrunDriver, RuncDriver
from kocoon.agent.drivers.vmsnapshot import VmSnapshotDriver
from kocoon.agent.keys import FileKeyProvider, KeyProvider, SecretKeyProvider
from kocoon.agent.service import CheckpointService, ServiceConfig
from kocoon.agent.store import CheckpointStore

log = logging.getLogger("kocoon.agent")

DEFAULT_PORT = 9443
DEFAULT_STATE_DIR = Path("/var/lib/kocoon-agent")
KEY_PROVIDER_FILE = "file"
KEY_PROVIDER_SECRET = "secret"
ENV_NODE_NAME = "NODE_NAME"
DEFAULT_RESTORED_RUNC_ROOT = Path("/run/kocoon-agent/runc")
# A wake pod cannot stop while its restored container lives (see ContainerdDriver.reap).
REAP_INTERVAL_SECONDS = 1.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kocoon agent", description=__doc__)
    p.add_argument("--host", default="0.0.0.0", help="listen address (default: all)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--tls-cert", type=Path, required=True, help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, required=True, help="server private key (PEM)")
    p.add_argument(
        "--dev-self-signed",
        action="store_true",
        help="create a self-signed --tls-cert/--tls-key pair if they do not exist",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        required=True,
        help="file holding the operator's bearer token (a mounted Secret)",
    )
    p.add_argument(
        "--client-ca",
        type=Path,
        help="require client certificates from this CA at the TLS handshake (mTLS); "
        "the bearer token is still required",
    )
    p.add_argument(
        "--client-cn",
        action="append",
        default=[],
        help="with --client-ca: the client certificate's common name must also be one of "
        "these (repeatable)",
    )
    p.add_argument("--node-name", default=os.environ.get(ENV_NODE_NAME) or socket.gethostname())
    p.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="archives (checkpoints/) and file keys (keys/) live here",
    )
    p.add_argument(
        "--scratch-dir",
        type=Path,
        help="CRIU images before archiving and after extraction; tmpfs is fastest "
        "(default: <state-dir>/scratch)",
    )
    p.add_argument(
        "--key-provider",
        choices=[KEY_PROVIDER_FILE, KEY_PROVIDER_SECRET],
        default=KEY_PROVIDER_FILE,
    )
    p.add_argument("--runc-root", type=Path, default=DEFAULT_RUNC_ROOT)
    p.add_argument("--crun-root", type=Path, default=DEFAULT_CRUN_ROOT)
    p.add_argument(
        "--cri-runc-root",
        type=Path,
        default=DEFAULT_CRI_RUNC_ROOT,
        help="runc state of containerd's Kubernetes containers (the containerd driver)",
    )
    p.add_argument(
        "--restored-runc-root",
        type=Path,
        default=DEFAULT_RESTORED_RUNC_ROOT,
        help="runc state of the containers the agent restored into pods",
    )
    p.add_argument("--criu", type=Path, help="CRIU binary (default: $KOCOON_CRIU, cache, PATH)")
    p.add_argument("--kubelet-url", default=DEFAULT_KUBELET_URL)
    p.add_argument("--kubelet-token-file", type=Path)
    p.add_argument("--kubelet-ca", type=Path)
    p.add_argument("--kubelet-checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINT_DIR)
    p.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    remote.add_arguments(p)
    return p


def build_drivers(args: argparse.Namespace, criu: CriuTool) -> dict[str, Driver]:
    kubelet = KubeletConfig(
        url=args.kubelet_url,
        token_file=args.kubelet_token_file,
        ca_file=args.kubelet_ca,
        checkpoint_dir=args.kubelet_checkpoint_dir,
    )
    drivers: list[Driver] = [
        RuncDriver(criu, root=args.runc_root),
        CrunDriver(criu, root=args.crun_root),
        ContainerdDriver(
            criu,
            cri_root=args.cri_runc_root,
            restored_root=args.restored_runc_root,
            bundles=args.state_dir / "bundles",
        ),
        ProcessDriver(criu),
        KubeletDriver(kubelet),
        FilesystemDriver(),
        VmSnapshotDriver(),
        GvisorDriver(),
    ]
    return {driver.name: driver for driver in drivers}


async def build_key_provider(kind: str, state_dir: Path) -> KeyProvider:
    if kind == KEY_PROVIDER_FILE:
        return FileKeyProvider(state_dir / "keys")
    from kubernetes_asyncio import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config()
    return SecretKeyProvider(client.CoreV1Api())


async def reap_forever(drivers: dict[str, Driver], interval: float) -> None:
    """Remove what drivers restored into pods that are gone (see ContainerdDriver.reap)."""
    while True:
        for driver in drivers.values():
            reap = getattr(driver, "reap", None)
            if reap is None:
                continue
            try:
                await reap()
            except Exception:
                log.exception("reaping restored containers failed", extra={"driver": driver.name})
        await asyncio.sleep(interval)


def build_authenticators(args: argparse.Namespace) -> list[Authenticator]:
    """The bearer token, always; with --client-cn, and a certificate with one of those names.

    --client-ca alone makes the TLS handshake require a certificate from that CA (see
    `tls.server_context`); the token is required on top of it.
    """
    token = BearerTokenAuthenticator(args.token_file)
    if not args.client_cn:
        return [token]
    if args.client_ca is None:
        raise ValueError("--client-cn: needs --client-ca, the CA of the operator's certificate")
    return [AllOf([token, ClientCertificateAuthenticator(set(args.client_cn))])]


async def serve(args: argparse.Namespace) -> None:
    if args.dev_self_signed and not (args.tls_cert.exists() and args.tls_key.exists()):
        tls.write_self_signed(
            args.tls_cert, args.tls_key, ["localhost", "127.0.0.1", args.node_name]
        )
        log.warning(
            "created a self-signed certificate for development", extra={"cert": str(args.tls_cert)}
        )
    criu = CriuTool(args.criu)
    remote_store = remote.RemoteStore.from_args(args)
    if remote_store is not None:
        problem = await remote_store.check()
        log.log(
            logging.WARNING if problem else logging.INFO,
            "remote store: checkpoints are copied to " + remote_store.where(),
            extra={"endpoint": args.s3_endpoint, **({"problem": problem} if problem else {})},
        )
    store = CheckpointStore(args.state_dir / "checkpoints")
    removed = store.clean_partials()
    if removed:
        log.info("removed unfinished archives", extra={"removed": removed})
    drivers = build_drivers(args, criu)
    service = CheckpointService(
        ServiceConfig(
            node_name=args.node_name, scratch_dir=args.scratch_dir or args.state_dir / "scratch"
        ),
        store,
        await build_key_provider(args.key_provider, args.state_dir),
        drivers,
        criu,
        remote=remote_store,
    )
    app = build_app(service, build_authenticators(args))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner,
        args.host,
        args.port,
        ssl_context=tls.server_context(args.tls_cert, args.tls_key, args.client_ca),
    )
    await site.start()
    facts = await service.node_facts()
    log.info(
        "agent listening",
        extra={
            "address": f"https://{args.host}:{args.port}",
            "node": args.node_name,
            "criu": facts.criu_version,
            "drivers": {d.name: d.available for d in facts.drivers},
        },
    )
    reaper = asyncio.create_task(reap_forever(drivers, REAP_INTERVAL_SECONDS))
    try:
        await asyncio.Event().wait()
    finally:
        reaper.cancel()
        await runner.cleanup()


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    logsetup.configure(level=logging.getLevelNamesMapping()[args.log_level.upper()])
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0
    return 0
