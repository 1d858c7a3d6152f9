"""Where each sandbox's data key lives: a file on the node, or a Kubernetes Secret.

One random 256-bit data key per sandbox encrypts all of its archives (each archive derives
its own key from it, see `crypto`). Deleting the key makes every archive of the sandbox
unreadable, which is how a deleted session's memory is destroyed even on a lost disk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Any, Protocol

from kocoon.agent import crypto
from kocoon.agent.errors import KeyInvalid, KeyUnavailable
from kocoon.agent.models import SandboxRef

SECRET_NAME_PREFIX = "kocoon-checkpoint-key-"
SECRET_DATA_KEY = "dataKey"
LABEL_SANDBOX = "kocoon.io/sandbox"
LABEL_COMPONENT = "app.kubernetes.io/component"
COMPONENT_CHECKPOINT_KEY = "checkpoint-key"
_MAX_NAME = 253
_MAX_LABEL_VALUE = 63


class KeyProvider(Protocol):
    async def get(self, sandbox: SandboxRef) -> bytes | None:
        """The sandbox's data key, or None when it has none."""
        ...

    async def get_or_create(self, sandbox: SandboxRef) -> bytes: ...

    async def delete(self, sandbox: SandboxRef) -> None: ...

    def describe(self, sandbox: SandboxRef) -> str:
        """Where the sandbox's key is kept, for error messages (never the key itself)."""
        ...


class FileKeyProvider:
    """Keys as 0600 files in a root-only directory on the node (development, single node)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def _path(self, sandbox: SandboxRef) -> Path:
        return self._dir / f"{sandbox.namespace}_{sandbox.name}.key"

    def describe(self, sandbox: SandboxRef) -> str:
        return f"key file {self._path(sandbox)}"

    async def get(self, sandbox: SandboxRef) -> bytes | None:
        try:
            key = self._path(sandbox).read_bytes()
        except FileNotFoundError:
            return None
        if len(key) != crypto.DATA_KEY_BYTES:
            raise KeyInvalid(
                f"key file {self._path(sandbox)} is damaged: {len(key)} bytes, "
                f"a data key has {crypto.DATA_KEY_BYTES}"
            )
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
    """`kocoon-checkpoint-key-<sandbox>`; a name too long for that ends with a hash of the
    sandbox's name instead, so two sandboxes never share a Secret."""
    name = f"{SECRET_NAME_PREFIX}{sandbox.name}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(sandbox.name.encode()).hexdigest()[:16]
    return f"{name[: _MAX_NAME - len(digest) - 1].rstrip('-.')}-{digest}"


def decode_secret_key(namespace: str, name: str, data: dict[str, str] | None) -> bytes:
    """Pure: the data key in a Secret's `data`; KeyInvalid naming the Secret when it is damaged."""
    where = f"Secret {namespace}/{name}"
    encoded = (data or {}).get(SECRET_DATA_KEY)
    if not encoded:
        raise KeyInvalid(f"{where} has no data.{SECRET_DATA_KEY}: it is not a checkpoint key")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise KeyInvalid(f"{where}: data.{SECRET_DATA_KEY} is not base64") from None
    if len(key) != crypto.DATA_KEY_BYTES:
        raise KeyInvalid(
            f"{where}: data.{SECRET_DATA_KEY} holds {len(key)} bytes, "
            f"a data key has {crypto.DATA_KEY_BYTES}"
        )
    return key


def secret_manifest(sandbox: SandboxRef, key: bytes) -> dict[str, Any]:
    """Pure: the Secret holding a sandbox's data key, in the sandbox's namespace.

    The sandbox's name is an annotation, and also a label when it fits in one (63 characters).
    """
    labels = {LABEL_COMPONENT: COMPONENT_CHECKPOINT_KEY}
    if len(sandbox.name) <= _MAX_LABEL_VALUE:
        labels[LABEL_SANDBOX] = sandbox.name
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(sandbox),
            "namespace": sandbox.namespace,
            "labels": labels,
            "annotations": {LABEL_SANDBOX: sandbox.name},
        },
        # A data key is never changed (a new one would orphan every archive): only deleted.
        "immutable": True,
        "data": {SECRET_DATA_KEY: base64.b64encode(key).decode()},
    }


def _api_failure(what: str, exc: Any) -> KeyUnavailable:
    detail = (getattr(exc, "reason", None) or "").strip() or type(exc).__name__
    status = getattr(exc, "status", None)
    answer = f"the API server answered {status} {detail}" if status else f"failed: {exc}"
    return KeyUnavailable(f"{what}: {answer}")


class SecretKeyProvider:
    """Keys in Kubernetes Secrets (production): survive the node, so any node can restore.

    One Secret per sandbox, `kocoon-checkpoint-key-<sandbox>` in the sandbox's namespace, type
    Opaque, labelled with the sandbox. It is never updated: a damaged key is reported, not
    replaced, since a new key would make every archive of the sandbox unreadable.

    `api` is a `kubernetes_asyncio.client.CoreV1Api`. The agent's RBAC needs get, create and
    delete on Secrets, nothing more (no list, watch, update or patch).
    """

    def __init__(self, api: Any) -> None:
        self._api = api

    def describe(self, sandbox: SandboxRef) -> str:
        return f"Secret {sandbox.namespace}/{secret_name(sandbox)}"

    async def get(self, sandbox: SandboxRef) -> bytes | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        name = secret_name(sandbox)
        try:
            secret = await self._api.read_namespaced_secret(name, sandbox.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_failure(f"reading {self.describe(sandbox)}", exc) from None
        return decode_secret_key(sandbox.namespace, name, secret.data)

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
                raise _api_failure(f"creating {self.describe(sandbox)}", exc) from None
            # Created concurrently: the stored key wins, so all archives share one key.
            stored = await self.get(sandbox)
            if stored is None:
                raise _api_failure(f"creating {self.describe(sandbox)}", exc) from None
            return stored
        return key

    async def delete(self, sandbox: SandboxRef) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            await self._api.delete_namespaced_secret(secret_name(sandbox), sandbox.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise _api_failure(f"deleting {self.describe(sandbox)}", exc) from None
