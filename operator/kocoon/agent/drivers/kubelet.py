"""The kubelet checkpoint API (KEP-2008): `POST /checkpoint/{namespace}/{pod}/{container}`.

Checkpoint only. The kubelet writes a tar under its checkpoint directory on this node (mounted
into the agent); the driver moves it into the image directory, so it is encrypted and stored
like any other checkpoint. There is no kubelet restore API, so restores are refused.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp

from kocoon.agent.drivers.base import (
    DRIVER_KUBELET,
    Availability,
    Available,
    CheckpointTarget,
    Dumped,
    Restored,
    RestoreTarget,
    Unsupported,
)
from kocoon.agent.errors import (
    CheckpointFailed,
    DriverUnavailable,
    InvalidRequest,
    RestoreUnsupported,
    TargetNotFound,
)

DEFAULT_KUBELET_URL = "https://127.0.0.1:10250"
DEFAULT_CHECKPOINT_DIR = Path("/var/lib/kubelet/checkpoints")
DEFAULT_TIMEOUT_SECONDS = 300
ARCHIVE_NAME = "kubelet-checkpoint.tar"
TARGET_POD = "pod"
TARGET_CONTAINER = "container"


@dataclass(frozen=True)
class KubeletConfig:
    url: str = DEFAULT_KUBELET_URL
    token_file: Path | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    checkpoint_dir: Path = DEFAULT_CHECKPOINT_DIR
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS


def checkpoint_url(base: str, namespace: str, pod: str, container: str, timeout: int) -> str:
    path = "/".join(quote(part, safe="") for part in ("checkpoint", namespace, pod, container))
    return f"{base.rstrip('/')}/{path}?timeout={timeout}"


class KubeletDriver:
    def __init__(self, config: KubeletConfig) -> None:
        self._config = config

    @property
    def name(self) -> str:
        return DRIVER_KUBELET

    async def probe(self) -> Availability:
        cfg = self._config
        parts = urlsplit(cfg.url)
        host, port = parts.hostname or "", parts.port or 10250
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
        except (OSError, TimeoutError) as exc:
            return Unsupported(f"no kubelet reachable at {cfg.url}: {exc or type(exc).__name__}")
        writer.close()
        if cfg.token_file is None and cfg.client_cert is None:
            return Unsupported("no kubelet credentials: give --kubelet-token-file or a client cert")
        if not cfg.checkpoint_dir.is_dir():
            return Unsupported(
                f"kubelet checkpoint directory {cfg.checkpoint_dir} is not mounted into the agent"
            )
        return Available(f"kubelet at {cfg.url}")

    async def runtime_identity(self) -> tuple[str | None, str | None]:
        return DRIVER_KUBELET, None

    def _ssl(self) -> ssl.SSLContext:
        cfg = self._config
        context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        if cfg.ca_file is None:
            # Kubelet serving certificates are often self-signed; without a CA the caller
            # accepts it, as `kubectl --insecure-skip-tls-verify` would.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if cfg.client_cert and cfg.client_key:
            context.load_cert_chain(str(cfg.client_cert), str(cfg.client_key))
        return context

    def _headers(self) -> dict[str, str]:
        if self._config.token_file is None:
            return {}
        return {"Authorization": f"Bearer {self._config.token_file.read_text().strip()}"}

    async def checkpoint(self, target: CheckpointTarget, image_dir: Path, work_dir: Path) -> Dumped:
        if not target.pod or not target.container:
            raise InvalidRequest(
                "pod, container: the kubelet driver needs the pod and container name"
            )
        if isinstance(availability := await self.probe(), Unsupported):
            raise DriverUnavailable(availability.reason)
        cfg = self._config
        url = checkpoint_url(
            cfg.url, target.sandbox.namespace, target.pod, target.container, cfg.timeout_seconds
        )
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_seconds + 30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, headers=self._headers(), ssl=self._ssl()) as response,
        ):
            body = await response.text()
        if response.status == 404:
            where = f"{target.sandbox.namespace}/{target.pod}/{target.container}"
            raise TargetNotFound(
                f"kubelet answered 404 for {where}: the container does not exist or the "
                f"ContainerCheckpoint feature gate is off: {body.strip()}"
            )
        if response.status != 200:
            raise CheckpointFailed(
                f"kubelet checkpoint failed with HTTP {response.status}: {body.strip()}"
            )
        items = json.loads(body).get("items") or []
        if not items:
            raise CheckpointFailed(f"kubelet reported no checkpoint archive: {body.strip()}")
        produced = Path(items[0])
        if not _inside(produced, cfg.checkpoint_dir):
            raise CheckpointFailed(
                f"kubelet wrote {produced}, outside the mounted {cfg.checkpoint_dir}"
            )
        await asyncio.to_thread(shutil.move, produced, image_dir / ARCHIVE_NAME)
        return Dumped(
            runtime=DRIVER_KUBELET,
            target={TARGET_POD: target.pod, TARGET_CONTAINER: target.container},
        )

    async def restore(self, target: RestoreTarget, image_dir: Path, work_dir: Path) -> Restored:
        raise RestoreUnsupported(
            "the kubelet checkpoint API has no restore (KEP-2008 is checkpoint-only and "
            "containerd removed restore-from-image); wake the sandbox cold from its workspace "
            "volume, or hibernate it with the runc driver"
        )


def _inside(path: Path, directory: Path) -> bool:
    return directory.resolve() in path.resolve().parents
