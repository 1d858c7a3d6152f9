"""The operator's side of hibernation: ask the node agent to checkpoint, restore and release.

The agent on the pod's node does the work; this client finds it, authenticates, and turns
its answers into typed results. Where no agent serves a node, or its driver cannot work
there, the error says so and the controller falls back (filesystem hibernation, cold wake):
nothing pretends.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from kocoon.agent.drivers.base import DRIVER_CONTAINERD
from kocoon.agent.models import CheckpointRecord, CheckpointRequest, RestoreRequest, SandboxRef
from kocoon.api.sandbox import Checkpoint, CheckpointCompatibility

AGENT_ENDPOINTS_ENV = "KOCOON_AGENT_ENDPOINTS"  # JSON: {"<node>" or "*": "https://host:port"}
AGENT_TOKEN_FILE_ENV = "KOCOON_AGENT_TOKEN_FILE"
AGENT_CA_FILE_ENV = "KOCOON_AGENT_CA_FILE"
# The operator's client certificate for agents that require one (mTLS, `--client-ca`).
AGENT_CLIENT_CERT_FILE_ENV = "KOCOON_AGENT_CLIENT_CERT_FILE"
AGENT_CLIENT_KEY_FILE_ENV = "KOCOON_AGENT_CLIENT_KEY_FILE"
DEFAULT_DRIVER_ENV = "KOCOON_CHECKPOINT_DRIVER"
TIMEOUT = aiohttp.ClientTimeout(total=600, connect=10)
# Drivers that restore beside the wake pod's container, which holds the place meanwhile.
RESTORES_INTO_POD = frozenset({DRIVER_CONTAINERD})


class CheckpointUnavailable(Exception):
    """Memory hibernation cannot work here (no agent, driver unsupported); fall back."""


class CheckpointFailed(Exception):
    """The agent tried and failed; the message carries its reason."""


class AgentUnreachable(CheckpointFailed):
    """No connection to the agent could be made: the request never reached it, so nothing was
    done and asking again is safe (an agent restarting, a node's network blip)."""


@dataclass(frozen=True)
class Target:
    """The container to checkpoint or restore into."""

    namespace: str
    sandbox: str
    pod: str
    node: str
    container_id: str | None
    pod_ip: str | None
    pod_uid: str | None = None
    container: str | None = None
    # Recorded with the checkpoint and compared before a restore: memory only fits its image.
    image_digest: str | None = None


class Checkpointer(Protocol):
    async def checkpoint(self, target: Target, checkpoint_id: str) -> Checkpoint: ...

    async def restore(self, target: Target, checkpoint: Checkpoint) -> None: ...

    async def release(self, namespace: str, checkpoint: Checkpoint) -> None: ...

    async def forget(self, namespace: str, name: str, node: str | None) -> None:
        """Delete everything the agent keeps for a Sandbox (its data key first)."""
        ...


def _record_to_status(record: CheckpointRecord) -> Checkpoint:
    compat = record.compatibility
    return Checkpoint(
        id=record.id,
        node=record.node,
        driver=record.driver,
        size_bytes=record.size_bytes,
        created=record.created,
        compatibility=CheckpointCompatibility(
            architecture=compat.architecture,
            kernel=compat.kernel_release,
            criu_version=compat.criu_version,
            runtime=compat.runtime,
            image_digest=compat.image_digest,
            gpu_model=compat.gpu_model,
            driver_version=compat.gpu_driver,
        ),
    )


@dataclass(frozen=True)
class ClientCertificate:
    cert_file: Path
    key_file: Path


class AgentTLS:
    """The TLS context for calling agents: their CA, and the operator's client certificate
    when agents require one. The certificate is loaded again when its files change (a
    renewed Secret), so calls after a renewal present the new one."""

    def __init__(self, ca_file: str | None, client: ClientCertificate | None = None) -> None:
        self.ca_file = ca_file
        self.client = client
        self._stamp: tuple[float, float] | None = None
        self._context: ssl.SSLContext | bool = True
        self._loaded = False
        self.context()  # fails now, naming the setting, if the files are unusable

    def _files_stamp(self) -> tuple[float, float] | None:
        if self.client is None:
            return None
        try:
            return (self.client.cert_file.stat().st_mtime, self.client.key_file.stat().st_mtime)
        except OSError as error:
            raise ValueError(
                f"{AGENT_CLIENT_CERT_FILE_ENV}, {AGENT_CLIENT_KEY_FILE_ENV}: {error}"
            ) from None

    def context(self) -> ssl.SSLContext | bool:
        stamp = self._files_stamp()
        if self._loaded and stamp == self._stamp:
            return self._context
        if not self.ca_file and self.client is None:
            context: ssl.SSLContext | bool = True
        else:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.client is not None:
                try:
                    context.load_cert_chain(str(self.client.cert_file), str(self.client.key_file))
                except (OSError, ssl.SSLError) as error:
                    raise ValueError(
                        f"{AGENT_CLIENT_CERT_FILE_ENV}, {AGENT_CLIENT_KEY_FILE_ENV}: "
                        f"{self.client.cert_file} and {self.client.key_file} are not a usable "
                        f"certificate and key: {error}"
                    ) from None
        self._context, self._stamp, self._loaded = context, stamp, True
        return context


def client_certificate_from_environment() -> ClientCertificate | None:
    cert = os.environ.get(AGENT_CLIENT_CERT_FILE_ENV)
    key = os.environ.get(AGENT_CLIENT_KEY_FILE_ENV)
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError(
            f"{AGENT_CLIENT_CERT_FILE_ENV}, {AGENT_CLIENT_KEY_FILE_ENV}: set both (the "
            "operator's client certificate for agents that require one) or neither"
        )
    return ClientCertificate(Path(cert), Path(key))


class AgentCheckpointer:
    """Talks to `kocoon agent` over HTTPS with the operator's bearer token, and with its
    client certificate when one is configured (agents started with `--client-ca`)."""

    def __init__(
        self,
        endpoints: dict[str, str],
        token: str,
        ca_file: str | None,
        driver: str = DRIVER_CONTAINERD,
        discover: Callable[[str], Awaitable[str | None]] | None = None,
        client_certificate: ClientCertificate | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.discover = discover
        self.token = token
        self.driver = driver
        self.tls = AgentTLS(ca_file, client_certificate)

    @property
    def ssl(self) -> ssl.SSLContext | bool:
        return self.tls.context()

    @classmethod
    def from_environment(
        cls, discover: Callable[[str], Awaitable[str | None]] | None = None
    ) -> AgentCheckpointer:
        endpoints = json.loads(os.environ.get(AGENT_ENDPOINTS_ENV, "{}"))
        token_file = os.environ.get(AGENT_TOKEN_FILE_ENV)
        token = Path(token_file).read_text().strip() if token_file else ""
        return cls(
            endpoints,
            token,
            os.environ.get(AGENT_CA_FILE_ENV),
            os.environ.get(DEFAULT_DRIVER_ENV, DRIVER_CONTAINERD),
            discover,
            client_certificate_from_environment(),
        )

    async def endpoint(self, node: str | None) -> str:
        """The agent serving `node`: configured, or the agent pod running on that node."""
        url = self.endpoints.get(node or "", self.endpoints.get("*"))
        if not url and node and self.discover is not None:
            url = await self.discover(node)
        if not url or not self.token:
            raise CheckpointUnavailable(f"no Kocoon agent serves node {node}")
        return url.rstrip("/")

    async def _call(
        self, node: str | None, method: str, path: str, body: Any = None
    ) -> dict[str, Any]:
        url = await self.endpoint(node) + path
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with (
                aiohttp.ClientSession(timeout=TIMEOUT) as session,
                session.request(method, url, json=body, headers=headers, ssl=self.ssl) as response,
            ):
                data: dict[str, Any] = await response.json(content_type=None) or {}
                if response.status == 404 and method == "DELETE":
                    return {}
                if response.status in (400, 422) and data.get("reason") in {
                    "DriverUnavailable",
                    "DriverUnknown",
                    "RestoreUnsupported",
                    "TargetNotFound",
                }:
                    raise CheckpointUnavailable(f"{data.get('reason')}: {data.get('message')}")
                if response.status >= 300:
                    raise CheckpointFailed(
                        f"agent on {node} answered {response.status} {data.get('reason')}:"
                        f" {data.get('message')}"
                    )
                return data
        except aiohttp.ClientConnectorError as error:
            raise AgentUnreachable(f"agent on {node} unreachable at {url}: {error}") from error
        except aiohttp.ClientError as error:
            # It may have received the call and acted on it: not asked again.
            raise CheckpointFailed(f"agent on {node} unreachable at {url}: {error}") from error

    async def checkpoint(self, target: Target, checkpoint_id: str) -> Checkpoint:
        request = CheckpointRequest(
            sandbox=SandboxRef(namespace=target.namespace, name=target.sandbox),
            driver=self.driver,
            container_id=target.container_id,
            pod=target.pod,
            pod_uid=target.pod_uid,
            container=target.container,
            id=checkpoint_id,
            image_digest=target.image_digest,
        )
        data = await self._call(
            target.node,
            "POST",
            "/v1/checkpoints",
            request.model_dump(by_alias=True, exclude_none=True),
        )
        return _record_to_status(CheckpointRecord.model_validate(data))

    async def restore(self, target: Target, checkpoint: Checkpoint) -> None:
        node = checkpoint.node
        if checkpoint.driver in RESTORES_INTO_POD:
            # Restored where the wake pod runs: normally the checkpoint's node; elsewhere the
            # agent there fetches the checkpoint from the bucket, if one is configured.
            request = RestoreRequest(
                pod_uid=target.pod_uid,
                container=target.container,
                image_digest=target.image_digest,
            )
            node = target.node or checkpoint.node
        else:
            request = RestoreRequest(container_id=target.container_id)
        await self._call(
            node,
            "POST",
            f"/v1/checkpoints/{checkpoint.id}/restore",
            request.model_dump(by_alias=True, exclude_none=True),
        )

    async def release(self, namespace: str, checkpoint: Checkpoint) -> None:
        await self._call(checkpoint.node, "DELETE", f"/v1/checkpoints/{checkpoint.id}")

    async def forget(self, namespace: str, name: str, node: str | None) -> None:
        """The agent deletes the Sandbox's key (Secret or file) and its archives, so a new
        Sandbox of the same name never reuses them. Asked of the agent on `node` (where the
        checkpoint or the pod was), else of any configured agent."""
        await self._call(node, "DELETE", f"/v1/sandboxes/{namespace}/{name}")


AGENT_SELECTOR = "app.kubernetes.io/name=kocoon,app.kubernetes.io/component=agent"
AGENT_PORT = 9443


def agent_pod_url(pods: list[dict[str, Any]], node: str, port: int = AGENT_PORT) -> str | None:
    """The HTTPS address of the running agent pod on `node`, from a list of agent pods."""
    for pod in pods:
        status = pod.get("status", {})
        if pod.get("spec", {}).get("nodeName") == node and status.get("phase") == "Running":
            ip = status.get("podIP")
            if ip:
                return f"https://{ip}:{port}"
    return None
