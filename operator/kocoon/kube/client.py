"""Generic async calls on any kind, on top of kubernetes-asyncio's ApiClient.

Objects stay plain dicts here: children are built by pure builders as dicts, and parsing
them into the client's generated models would only lose fields the models lag behind on.
"""

from __future__ import annotations

import json
import os
from typing import Any, cast

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from kocoon.kube.resources import Kind, kind_of

FIELD_MANAGER = "kocoon-operator"


class ApiError(Exception):
    """A non-2xx answer from the API server, with its status code and message."""

    def __init__(self, status: int, reason: str, body: dict[str, Any]) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        super().__init__(f"{status} {reason}: {body.get('message', '')}")

    @property
    def message(self) -> str:
        """The API server's own words (its Status message), else the HTTP reason."""
        return str(self.body.get("message") or f"{self.status} {self.reason}")


class Conflict(ApiError):
    """409: the object exists already (create), or moved since it was read (a write that
    carried its resourceVersion). Retry with the newer object."""


def error_for(status: int, reason: str, body: dict[str, Any]) -> ApiError:
    return Conflict(status, reason, body) if status == 409 else ApiError(status, reason, body)


async def new_api_client(kubeconfig: str | None = None) -> k8s.ApiClient:
    """A client from a kubeconfig file, $KUBECONFIG, or the in-cluster service account."""
    configuration = k8s.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        await k8s_config.load_kube_config(config_file=path, client_configuration=configuration)
    else:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return k8s.ApiClient(configuration)


async def request(
    api: k8s.ApiClient,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    response = await api.call_api(
        path,
        method,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    raw = await response.read()
    data = cast(dict[str, Any], json.loads(raw)) if raw else {}
    if response.status >= 300:
        raise error_for(response.status, str(response.reason), data)
    return data


async def apply(
    api: k8s.ApiClient, obj: dict[str, Any], *, manager: str = FIELD_MANAGER
) -> dict[str, Any]:
    """Server-side apply: the object's fields become owned by `manager`; idempotent."""
    kind = kind_of(obj)
    meta = obj["metadata"]
    return await request(
        api,
        "PATCH",
        kind.path(meta.get("namespace"), meta["name"]),
        body=obj,
        query=[("fieldManager", manager), ("force", "true")],
        content_type="application/apply-patch+yaml",
    )


async def get(
    api: k8s.ApiClient, kind: Kind, namespace: str | None, name: str
) -> dict[str, Any] | None:
    try:
        return await request(api, "GET", kind.path(namespace, name))
    except ApiError as error:
        if error.status == 404:
            return None
        raise


async def list_objects(
    api: k8s.ApiClient, kind: Kind, namespace: str | None = None, label_selector: str | None = None
) -> list[dict[str, Any]]:
    query = [("labelSelector", label_selector)] if label_selector else []
    result = await request(api, "GET", kind.path(namespace), query=query)
    return cast(list[dict[str, Any]], result.get("items", []))


async def delete(
    api: k8s.ApiClient,
    kind: Kind,
    namespace: str | None,
    name: str,
    *,
    propagation: str = "Background",
    preconditions_uid: str | None = None,
    grace_period_seconds: int | None = None,
) -> bool:
    """Delete an object; False if it was already gone."""
    body: dict[str, Any] = {"propagationPolicy": propagation}
    if preconditions_uid:
        body["preconditions"] = {"uid": preconditions_uid}
    if grace_period_seconds is not None:
        body["gracePeriodSeconds"] = grace_period_seconds
    try:
        await request(api, "DELETE", kind.path(namespace, name), body=body)
    except ApiError as error:
        if error.status == 404:
            return False
        raise
    return True


async def merge_patch(
    api: k8s.ApiClient,
    kind: Kind,
    namespace: str | None,
    name: str,
    patch: dict[str, Any],
    *,
    subresource: str | None = None,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """A JSON merge patch; with `resource_version`, refused (`Conflict`) if the object moved
    since that version was read."""
    if resource_version is not None:
        metadata = {**patch.get("metadata", {}), "resourceVersion": resource_version}
        patch = {**patch, "metadata": metadata}
    return await request(
        api,
        "PATCH",
        kind.path(namespace, name, subresource),
        body=patch,
        content_type="application/merge-patch+json",
    )
