"""Where each sandbox's data key lives: a file on the node, or a Kubernetes Secret.

One random 256-bit data key per sandbox encrypts all of its archives (each archive derives
its own key from it, see `crypto`). Deleting the key makes every archive of the sandbox
unreadable, which is how a deleted session's memory is destroyed even on a lost disk.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, Protocol

from kocoon.agent import crypto
from kocoon.agent.models import SandboxRef

SECRET_NAME_PREFIX = "kocoon-checkpoint-key-"
SECRET_DATA_KEY = "dataKey"
LABEL_SANDBOX = "kocoon.io/sandbox"
LABEL_COMPONENT = "app.kubernetes.io/component"
COMPONENT_CHECKPOINT_KEY = "checkpoint-key"


class KeyProvider(Protocol):
    async def get(self, sandbox: SandboxRef) -> bytes | None:
        """The sandbox's data key, or None when it has none."""
        ...

    async def get_or_create(self, sandbox: SandboxRef) -> bytes: ...

    async def delete(self, sandbox: SandboxRef) -> None: ...


class FileKeyProvider:
    """Keys as 0600 files in a root-only directory on the node (development, single node)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def _path(self, sandbox: SandboxRef) -> Path:
        return self._dir / f"{sandbox.namespace}_{sandbox.name}.key"

    async def get(self, sandbox: SandboxRef) -> bytes | None:
        try:
            key = self._path(sandbox).read_bytes()
        except FileNotFoundError:
            return None
        if len(key) != crypto.DATA_KEY_BYTES:
            raise ValueError(f"key file {self._path(sandbox)} is damaged (length {len(key)})")
        return key

    async def get_or_create(self, sandbox: SandboxRef) -> bytes:
        existing = await self.get(sandbox)
        if existing is not None:
            return existing
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = crypto.new_data_key()
        path = self._path(sandbox)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return key

    async def delete(self, sandbox: SandboxRef) -> None:
        self._path(sandbox).unlink(missing_ok=True)


def secret_name(sandbox: SandboxRef) -> str:
    return f"{SECRET_NAME_PREFIX}{sandbox.name}"[:253]


def secret_manifest(sandbox: SandboxRef, key: bytes) -> dict[str, Any]:
    """Pure: the Secret holding a sandbox's data key, in the sandbox's namespace."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(sandbox),
            "namespace": sandbox.namespace,
            "labels": {LABEL_SANDBOX: sandbox.name, LABEL_COMPONENT: COMPONENT_CHECKPOINT_KEY},
        },
        "data": {SECRET_DATA_KEY: base64.b64encode(key).decode()},
    }


class SecretKeyProvider:
    """Keys in Kubernetes Secrets (production): survive the node, readable by the agent only.

    `api` is a `kubernetes_asyncio.client.CoreV1Api`. The agent's RBAC needs get, create and
    delete on Secrets; the operator may own the Secret by the Sandbox for garbage collection.
    """

    def __init__(self, api: Any) -> None:
        self._api = api

    async def get(self, sandbox: SandboxRef) -> bytes | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            secret = await self._api.read_namespaced_secret(secret_name(sandbox), sandbox.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        encoded = (secret.data or {}).get(SECRET_DATA_KEY)
        return base64.b64decode(encoded) if encoded else None

    async def get_or_create(self, sandbox: SandboxRef) -> bytes:
        from kubernetes_asyncio.client.exceptions import ApiException

        existing = await self.get(sandbox)
        if existing is not None:
            return existing
        key = crypto.new_data_key()
        try:
            await self._api.create_namespaced_secret(
                sandbox.namespace, secret_manifest(sandbox, key)
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            # Created concurrently: the stored key wins, so all archives share one key.
            stored = await self.get(sandbox)
            if stored is None:
                raise
            return stored
        return key

    async def delete(self, sandbox: SandboxRef) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            await self._api.delete_namespaced_secret(secret_name(sandbox), sandbox.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
