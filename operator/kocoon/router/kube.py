"""The router's only I/O with the Kubernetes API: watches into the table, Lease writes.

- Sandboxes, AgentSessions and ModelDeployments are listed and watched into the routing table;
  token Secrets (labelled `kocoon.io/router-token: "true"`) and API-key Secrets (labelled
  `kocoon.io/api-key: "true"`) likewise, as SHA-256 digests.
- Activity is a merge patch of the target's Lease (`kocoon-activity-<kind>-<name>`).
- A wake is the annotation `kocoon.io/wake-requested-at` on that Lease, written only when it
  is absent and only with the Lease's resourceVersion (optimistic concurrency), so of several
  replicas asking at once exactly one write succeeds. The operator treats the annotation as
  level-based: present means "bring the target up", and removes it once it has acted.

The field readers below take plain dicts on purpose: the router follows the documented status
contract (docs/router.md) and does not import the API models; the names it shares with the
operator come from `kocoon.contract`, the only module of the operator it imports.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import enum
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from kocoon import contract
from kocoon.contract import (
    API_KEY_KEY,
    API_KEY_MODELS_ANNOTATION,
    API_KEY_SECRET_LABEL,
    CONDITION_READY,
    GROUP,
    IN_FLIGHT_ANNOTATION,
    LAST_REQUEST_ANNOTATION,
    LEASE_NAME_PREFIX,
    PREVIOUS_TOKEN_KEY,
    QUEUED_ANNOTATION,
    TARGET_KIND_LABEL,
    TARGET_NAME_LABEL,
    TOKEN_KEY,
    TOKEN_SECRET_LABEL,
    VERSION,
    WAKE_REQUESTED_ANNOTATION,
)
from kocoon.router.activity import ActivitySnapshot
from kocoon.router.auth import hash_token
from kocoon.router.table import (
    PHASE_TERMINATING,
    ApiKeyView,
    BackendView,
    ModelBackend,
    ModelView,
    RoutingTable,
    SessionView,
    TargetKey,
    TargetKind,
)

log = logging.getLogger(__name__)

__all__ = [  # the contract names tests and callers read through this module
    "API_KEY_KEY", "API_KEY_MODELS_ANNOTATION", "API_KEY_SECRET_LABEL", "IN_FLIGHT_ANNOTATION",
    "LAST_REQUEST_ANNOTATION", "LEASE_NAME_PREFIX", "PREVIOUS_TOKEN_KEY", "QUEUED_ANNOTATION",
    "TARGET_KIND_LABEL", "TARGET_NAME_LABEL", "TOKEN_KEY", "TOKEN_SECRET_LABEL",
    "TOKEN_SECRET_LABEL_VALUE", "WAKE_REQUESTED_ANNOTATION",
]  # fmt: skip
PLURALS: dict[TargetKind, str] = {
    TargetKind.SANDBOX: "sandboxes",
    TargetKind.SESSION: "agentsessions",
    TargetKind.MODEL: "modeldeployments",
}

LEASE_DURATION_FACTOR = 3  # leaseDurationSeconds = factor x renewal interval
TOKEN_SECRET_LABEL_VALUE = contract.SECRET_LABEL_VALUE


class SecretKind(enum.StrEnum):
    """The two kinds of Secrets the router watches (by label)."""

    TOKEN = "token"
    API_KEY = "api-key"


SECRET_LABELS: dict[SecretKind, str] = {
    SecretKind.TOKEN: TOKEN_SECRET_LABEL,
    SecretKind.API_KEY: API_KEY_SECRET_LABEL,
}
Source = TargetKind | SecretKind

MERGE_PATCH = "application/merge-patch+json"
WATCH_TIMEOUT_SECONDS = 300
RELIST_BACKOFF_SECONDS = 2.0


# --- pure: status → views -----------------------------------------------------------------


def lease_name(key: TargetKey) -> str:
    return contract.activity_lease_name(key.kind.value, key.name)


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


def phase_of(obj: Mapping[str, Any]) -> str:
    """`status.phase`, except `Terminating` for an object being deleted.

    The operator never writes `Terminating`; a deletionTimestamp is the fact it stands for,
    and a target being deleted must be answered at once, not held and woken.
    """
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return PHASE_TERMINATING
    return str((obj.get("status") or {}).get("phase") or "")


def backend_view(obj: Mapping[str, Any]) -> BackendView:
    status = obj.get("status") or {}
    return BackendView(
        phase=phase_of(obj),
        ready=is_ready(status),
        endpoints=endpoints(status),
        token_secret=_ref_name(status.get("tokenSecretRef")),
    )


def session_view(obj: Mapping[str, Any]) -> SessionView:
    status = obj.get("status") or {}
    models = (obj.get("spec") or {}).get("models") or []
    return SessionView(
        phase=phase_of(obj),
        sandbox_ref=_ref_name(status.get("sandboxRef")),
        token_secret=_ref_name(status.get("tokenSecretRef")),
        models=frozenset(n for n in (_ref_name(m) for m in models) if n),
    )


def served_name(obj: Mapping[str, Any]) -> str:
    """`status.servedModelName`, else `spec.route.servedModelName`, else the object's name."""
    status = obj.get("status") or {}
    route = (obj.get("spec") or {}).get("route") or {}
    for value in (status.get("servedModelName"), route.get("servedModelName")):
        if isinstance(value, str) and value:
            return value
    return str((obj.get("metadata") or {}).get("name", ""))


def model_view(obj: Mapping[str, Any]) -> ModelView:
    """A ModelDeployment: phase, served name and `status.backends[]` (one per replica pod)."""
    status = obj.get("status") or {}
    backends = []
    for item in status.get("backends") or []:
        if not isinstance(item, Mapping):
            continue
        address = item.get("address")
        if not isinstance(address, str) or not address:
            continue
        backends.append(
            ModelBackend(
                address=address,
                ready=item.get("ready") is True,
                sleeping=item.get("sleeping") is True,
                pod=str(item.get("pod") or ""),
            )
        )
    return ModelView(phase=phase_of(obj), served_name=served_name(obj), backends=tuple(backends))


def api_key_view(secret: Mapping[str, Any]) -> ApiKeyView:
    """An API-key Secret: the digest of `data.key` and the `kocoon.io/models` annotation
    (comma-separated served names; absent: every model of the namespace, empty: none)."""
    data = secret.get("data") or {}
    encoded = data.get(API_KEY_KEY)
    digests = frozenset({hash_token(base64.b64decode(encoded))}) if encoded else frozenset()
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    listed = annotations.get(API_KEY_MODELS_ANNOTATION)
    models = None
    if listed is not None:
        models = frozenset(m.strip() for m in str(listed).split(",") if m.strip())
    return ApiKeyView(digests=digests, models=models)


def token_hashes(secret: Mapping[str, Any]) -> list[bytes]:
    """Digests of the current and (during rotation) previous token of a Secret."""
    data = secret.get("data") or {}
    hashes = []
    for key in (TOKEN_KEY, PREVIOUS_TOKEN_KEY):
        encoded = data.get(key)
        if encoded:
            hashes.append(hash_token(base64.b64decode(encoded)))
    return hashes


def apply_event(table: RoutingTable, kind: Source, event: str, obj: Mapping[str, Any]) -> None:
    """One watch event into the table."""
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    deleted = event == "DELETED"
    if kind is SecretKind.TOKEN:
        if deleted:
            table.delete_secret(namespace, name)
        else:
            table.upsert_secret(namespace, name, token_hashes(obj))
    elif kind is SecretKind.API_KEY:
        if deleted:
            table.delete_api_key(namespace, name)
        else:
            table.upsert_api_key(namespace, name, api_key_view(obj))
    elif kind is TargetKind.MODEL:
        if deleted:
            table.delete_model(namespace, name)
        else:
            table.upsert_model(namespace, name, model_view(obj))
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
    snapshot: ActivitySnapshot,
    holder: str,
    now: datetime.datetime,
    interval: float,
    *,
    with_queue: bool = False,
) -> dict[str, Any]:
    """The Lease merge patch of one renewal; `with_queue` adds the held count (models)."""
    last = datetime.datetime.fromtimestamp(snapshot.last_request_at, datetime.UTC)
    annotations = {
        LAST_REQUEST_ANNOTATION: microtime(last),
        IN_FLIGHT_ANNOTATION: str(snapshot.in_flight),
    }
    if with_queue:
        annotations[QUEUED_ANNOTATION] = str(snapshot.queued)
    return {
        "metadata": {"annotations": annotations},
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
        patch = renewal_patch(
            snapshot, self.holder, self.clock(), self.interval,
            with_queue=key.kind is TargetKind.MODEL,
        )  # fmt: skip
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

    def sources(self) -> list[tuple[str, Source, ListFn, dict[str, Any]]]:
        custom = client.CustomObjectsApi(self.api)
        core = client.CoreV1Api(self.api)
        out: list[tuple[str, Source, ListFn, dict[str, Any]]] = []
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
            for secret_kind, label in SECRET_LABELS.items():
                selector = {"label_selector": f"{label}={contract.SECRET_LABEL_VALUE}"}
                name = f"secrets:{secret_kind}@{where}"
                if ns is None:
                    out.append((name, secret_kind, core.list_secret_for_all_namespaces, selector))
                else:
                    selector["namespace"] = ns
                    out.append((name, secret_kind, core.list_namespaced_secret, selector))
        return out

    @property
    def ready(self) -> bool:
        return bool(self._sources) and self.synced >= set(self._sources)

    async def run(self) -> None:
        sources = self.sources()
        self._sources = [name for name, *_ in sources]
        await asyncio.gather(*(self._follow(*source) for source in sources))

    async def _follow(self, name: str, kind: Source, fn: ListFn, kwargs: dict[str, Any]) -> None:
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
        kind: Source,
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
        kind: Source,
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
