"""The router's only I/O with the Kubernetes API: watches into the table, Lease writes.

- Sandboxes, AgentSessions and ModelDeployments are listed and watched into the routing table;
  token Secrets (labelled `kocoon.io/router-token: "true"`) likewise, as SHA-256 digests.
- Activity is a merge patch of the target's Lease (`kocoon-activity-<kind>-<name>`).
- A wake is the annotation `kocoon.io/wake-requested-at` on that Lease, written only when it
  is absent and only with the Lease's resourceVersion (optimistic concurrency), so of several
  replicas asking at once exactly one write succeeds. The operator treats the annotation as
  level-based: present means "bring the target up", and removes it once it has acted.

The field readers below take plain dicts on purpose: the router follows the documented status
contract (docs/router.md) and does not import the API models.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from kocoon.router.activity import ActivitySnapshot
from kocoon.router.auth import hash_token
from kocoon.router.table import (
    BackendView,
    RoutingTable,
    SessionView,
    TargetKey,
    TargetKind,
)

log = logging.getLogger(__name__)

GROUP = "kocoon.io"
VERSION = "v1alpha1"
PLURALS: dict[TargetKind, str] = {
    TargetKind.SANDBOX: "sandboxes",
    TargetKind.SESSION: "agentsessions",
    TargetKind.MODEL: "modeldeployments",
}

# Lease contract
LEASE_NAME_PREFIX = "kocoon-activity-"
WAKE_REQUESTED_ANNOTATION = "kocoon.io/wake-requested-at"
LAST_REQUEST_ANNOTATION = "kocoon.io/last-request-at"
IN_FLIGHT_ANNOTATION = "kocoon.io/in-flight"
TARGET_KIND_LABEL = "kocoon.io/target-kind"
TARGET_NAME_LABEL = "kocoon.io/target-name"
LEASE_DURATION_FACTOR = 3  # leaseDurationSeconds = factor x renewal interval

# Token Secret contract
TOKEN_SECRET_LABEL = "kocoon.io/router-token"
TOKEN_SECRET_LABEL_VALUE = "true"
TOKEN_KEY = "token"
PREVIOUS_TOKEN_KEY = "previousToken"

# Status contract
CONDITION_READY = "Ready"
MERGE_PATCH = "application/merge-patch+json"
WATCH_TIMEOUT_SECONDS = 300
RELIST_BACKOFF_SECONDS = 2.0


# --- pure: status → views -----------------------------------------------------------------


def lease_name(key: TargetKey) -> str:
    return f"{LEASE_NAME_PREFIX}{key.kind.value}-{key.name}"


def _ref_name(value: object) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        name = value.get("name")
        return name if isinstance(name, str) and name else None
    return None


def is_ready(status: Mapping[str, Any]) -> bool:
    conditions = status.get("conditions") or []
    return any(
        c.get("type") == CONDITION_READY and c.get("status") == "True"
        for c in conditions
        if isinstance(c, Mapping)
    )


def endpoints(status: Mapping[str, Any]) -> tuple[str, ...]:
    """Where to forward: `status.podIP` + `status.port`, else `serviceFQDN` + `port`.

    `status.endpoint` is the target's URL *through the router*, so it is never a backend.
    """
    port = status.get("port")
    if not port:
        return ()
    for host_field in ("podIP", "serviceFQDN"):
        host = status.get(host_field)
        if isinstance(host, str) and host:
            return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}",)
    return ()


def backend_view(obj: Mapping[str, Any]) -> BackendView:
    status = obj.get("status") or {}
    return BackendView(
        phase=str(status.get("phase") or ""),
        ready=is_ready(status),
        endpoints=endpoints(status),
        token_secret=_ref_name(status.get("tokenSecretRef")),
    )


def session_view(obj: Mapping[str, Any]) -> SessionView:
    status = obj.get("status") or {}
    return SessionView(
        phase=str(status.get("phase") or ""),
        sandbox_ref=_ref_name(status.get("sandboxRef")),
        token_secret=_ref_name(status.get("tokenSecretRef")),
    )


def token_hashes(secret: Mapping[str, Any]) -> list[bytes]:
    """Digests of the current and (during rotation) previous token of a Secret."""
    data = secret.get("data") or {}
    hashes = []
    for key in (TOKEN_KEY, PREVIOUS_TOKEN_KEY):
        encoded = data.get(key)
        if encoded:
            hashes.append(hash_token(base64.b64decode(encoded)))
    return hashes


def apply_event(
    table: RoutingTable, kind: TargetKind | None, event: str, obj: Mapping[str, Any]
) -> None:
    """One watch event into the table; `kind` None means a token Secret."""
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    deleted = event == "DELETED"
    if kind is None:
        if deleted:
            table.delete_secret(namespace, name)
        else:
            table.upsert_secret(namespace, name, token_hashes(obj))
    elif kind is TargetKind.SESSION:
        if deleted:
            table.delete_session(namespace, name)
        else:
            table.upsert_session(namespace, name, session_view(obj))
    else:
        key = TargetKey(kind, namespace, name)
        if deleted:
            table.delete_backend(key)
        else:
            table.upsert_backend(key, backend_view(obj))


def microtime(at: datetime.datetime) -> str:
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def renewal_patch(
    snapshot: ActivitySnapshot, holder: str, now: datetime.datetime, interval: float
) -> dict[str, Any]:
    last = datetime.datetime.fromtimestamp(snapshot.last_request_at, datetime.UTC)
    return {
        "metadata": {
            "annotations": {
                LAST_REQUEST_ANNOTATION: microtime(last),
                IN_FLIGHT_ANNOTATION: str(snapshot.in_flight),
            }
        },
        "spec": {
            "holderIdentity": holder,
            "renewTime": microtime(now),
            "leaseDurationSeconds": max(1, int(interval * LEASE_DURATION_FACTOR)),
        },
    }


def new_lease(key: TargetKey, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(key),
            "namespace": key.namespace,
            "labels": {TARGET_KIND_LABEL: key.kind.value, TARGET_NAME_LABEL: key.name},
            "annotations": dict(annotations or {}),
        },
        "spec": {},
    }


def wake_needed(lease: Mapping[str, Any] | None) -> bool:
    """Whether a wake request must be written: not when one is already pending."""
    if lease is None:
        return True
    annotations = (lease.get("metadata") or {}).get("annotations") or {}
    return WAKE_REQUESTED_ANNOTATION not in annotations


# --- I/O -------------------------------------------------------------------------------------


async def load_config(kubeconfig: Path | None) -> client.ApiClient:
    if kubeconfig is not None:
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        return client.ApiClient(configuration=cfg)
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config()
    return client.ApiClient()


@dataclass
class LeaseWriter:
    """Activity renewals and wake requests, both on the target's Lease."""

    api: client.ApiClient
    holder: str
    interval: float
    clock: Callable[[], datetime.datetime] = field(
        default=lambda: datetime.datetime.now(datetime.UTC)
    )

    @property
    def leases(self) -> Any:
        # Any: the generated client's stubs lack the `_content_type`/`_preload_content`
        # keywords and dict bodies that it accepts at run time.
        return client.CoordinationV1Api(self.api)

    async def renew(self, key: TargetKey, snapshot: ActivitySnapshot) -> None:
        patch = renewal_patch(snapshot, self.holder, self.clock(), self.interval)
        try:
            await self.leases.patch_namespaced_lease(
                lease_name(key), key.namespace, patch, _content_type=MERGE_PATCH
            )
        except ApiException as error:
            if error.status != 404:
                raise
            body = new_lease(key)
            body["metadata"]["annotations"].update(patch["metadata"]["annotations"])
            body["spec"] = patch["spec"]
            await self._create(key, body)

    async def request_wake(self, key: TargetKey) -> None:
        await self.write_wake_request(key)

    async def write_wake_request(self, key: TargetKey) -> bool:
        """Set the wake annotation unless present; True when this call wrote it.

        A 409 means another replica (or the operator) changed the Lease first: re-read, and
        find the request already there or write it on the fresh version.
        """
        while True:
            lease = await self._read(key)
            if not wake_needed(lease):
                return False
            stamp = {WAKE_REQUESTED_ANNOTATION: microtime(self.clock())}
            try:
                if lease is None:
                    await self.leases.create_namespaced_lease(key.namespace, new_lease(key, stamp))
                else:
                    metadata = lease["metadata"]
                    metadata.setdefault("annotations", {}).update(stamp)
                    # replace carries metadata.resourceVersion: a concurrent write makes it 409
                    await self.leases.replace_namespaced_lease(
                        lease_name(key), key.namespace, lease
                    )
                return True
            except ApiException as error:
                if error.status != 409:
                    raise
                log.debug("wake request raced; re-reading", extra={"target": str(key)})

    async def _read(self, key: TargetKey) -> dict[str, Any] | None:
        # Raw JSON keeps the Lease a plain dict for the replace; unpreloaded responses do not
        # raise on error statuses, so check it here.
        response = await self.leases.read_namespaced_lease(
            lease_name(key), key.namespace, _preload_content=False
        )
        body = await response.read()
        if response.status == 404:
            return None
        if response.status >= 300:
            raise ApiException(status=response.status, reason=body.decode(errors="replace"))
        lease: dict[str, Any] = json.loads(body)
        return lease

    async def _create(self, key: TargetKey, body: dict[str, Any]) -> None:
        try:
            await self.leases.create_namespaced_lease(key.namespace, body)
        except ApiException as error:
            if error.status != 409:  # created meanwhile by another replica: fine
                raise


ListFn = Callable[..., Awaitable[Any]]


@dataclass
class TableWatcher:
    """List-then-watch every source into the table, relisting when a watch expires."""

    api: client.ApiClient
    table: RoutingTable
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    synced: set[str] = field(default_factory=set)
    _sources: list[str] = field(default_factory=list)

    def sources(self) -> list[tuple[str, TargetKind | None, ListFn, dict[str, Any]]]:
        custom = client.CustomObjectsApi(self.api)
        core = client.CoreV1Api(self.api)
        secret_selector = f"{TOKEN_SECRET_LABEL}={TOKEN_SECRET_LABEL_VALUE}"
        out: list[tuple[str, TargetKind | None, ListFn, dict[str, Any]]] = []
        for ns in self.namespaces or (None,):
            where = ns or "*"
            for kind, plural in PLURALS.items():
                if ns is None:
                    fn: ListFn = custom.list_cluster_custom_object
                    kwargs: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": plural}
                else:
                    fn = custom.list_namespaced_custom_object
                    kwargs = {"group": GROUP, "version": VERSION, "plural": plural, "namespace": ns}
                out.append((f"{plural}@{where}", kind, fn, kwargs))
            if ns is None:
                out.append(
                    (f"secrets@{where}", None, core.list_secret_for_all_namespaces,
                     {"label_selector": secret_selector})
                )  # fmt: skip
            else:
                out.append(
                    (f"secrets@{where}", None, core.list_namespaced_secret,
                     {"namespace": ns, "label_selector": secret_selector})
                )  # fmt: skip
        return out

    @property
    def ready(self) -> bool:
        return bool(self._sources) and self.synced >= set(self._sources)

    async def run(self) -> None:
        sources = self.sources()
        self._sources = [name for name, *_ in sources]
        await asyncio.gather(*(self._follow(*source) for source in sources))

    async def _follow(
        self, name: str, kind: TargetKind | None, fn: ListFn, kwargs: dict[str, Any]
    ) -> None:
        known: set[tuple[str, str]] = set()
        while True:
            try:
                version = await self._relist(kind, fn, kwargs, known)
                self.synced.add(name)
                await self._watch(kind, fn, kwargs, known, version)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("watch failed; relisting", extra={"source": name, "error": repr(error)})
                await asyncio.sleep(RELIST_BACKOFF_SECONDS)

    async def _relist(
        self,
        kind: TargetKind | None,
        fn: ListFn,
        kwargs: dict[str, Any],
        known: set[tuple[str, str]],
    ) -> str:
        response = await fn(**kwargs, _preload_content=False)
        body = await response.read()
        if response.status >= 300:
            raise ApiException(status=response.status, reason=body.decode(errors="replace"))
        listing = json.loads(body)
        seen: set[tuple[str, str]] = set()
        for obj in listing.get("items") or []:
            meta = obj.get("metadata") or {}
            seen.add((meta.get("namespace", ""), meta.get("name", "")))
            apply_event(self.table, kind, "ADDED", obj)
        for namespace, gone in known - seen:
            apply_event(
                self.table, kind, "DELETED", {"metadata": {"namespace": namespace, "name": gone}}
            )
        known.clear()
        known.update(seen)
        return str((listing.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(
        self,
        kind: TargetKind | None,
        fn: ListFn,
        kwargs: dict[str, Any],
        known: set[tuple[str, str]],
        version: str,
    ) -> None:
        # A server-side timeout ends the stream cleanly; loop from the last version seen.
        while True:
            stream = watch.Watch()
            async with stream:
                async for event in stream.stream(
                    fn, **kwargs, resource_version=version, timeout_seconds=WATCH_TIMEOUT_SECONDS,
                    allow_watch_bookmarks=True,
                ):  # fmt: skip
                    obj = event["raw_object"]
                    kind_of_event = event["type"]
                    if kind_of_event == "BOOKMARK":
                        version = obj["metadata"]["resourceVersion"]
                        continue
                    meta = obj.get("metadata") or {}
                    ident = (meta.get("namespace", ""), meta.get("name", ""))
                    if kind_of_event == "DELETED":
                        known.discard(ident)
                    else:
                        known.add(ident)
                    apply_event(self.table, kind, kind_of_event, obj)
                    version = meta.get("resourceVersion", version)
