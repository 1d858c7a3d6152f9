"""Running a controller's reconcile against kmock's Kubernetes emulator (the handler tier)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import kmock
import pytest
from kubernetes_asyncio import client as k8s

from kocoon.builders.context import BuildSettings
from kocoon.config import OperatorConfig
from kocoon.controllers import context
from kocoon.controllers.checkpoints import Checkpointer
from kocoon.kube import client as kube_client
from kocoon.kube.resources import kind_of

SANDBOXES = "kocoon.io/v1alpha1/sandboxes"
SESSIONS = "kocoon.io/v1alpha1/agentsessions"
CUSTOM = {SANDBOXES: ("Sandbox", "sandbox"), SESSIONS: ("AgentSession", "agentsession")}


class Clock:
    """A controller's clock (its `_now`), moved forward by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@asynccontextmanager
async def emulator(*resources: str) -> AsyncIterator[tuple[kmock.KubernetesEmulator, str]]:
    """The emulator serving Kocoon's `resources` and the built-in kinds; (emulator, URL)."""
    async with kmock.KubernetesEmulator() as k, kmock.Server(k) as server:
        for resource in resources:
            kind, singular = CUSTOM[resource]
            k.resources[resource] = {
                "kind": kind,
                "namespaced": True,
                "singular": singular,
                "verbs": ["list", "watch", "get", "patch", "create", "delete"],
                "subresources": ["status"],
                "shortnames": [],
                "categories": [],
            }
        k.resources.load_bundled()
        yield k, str(server.url).rstrip("/")


@asynccontextmanager
async def operator_context(
    url: str, checkpointer: Checkpointer
) -> AsyncIterator[context.OperatorContext]:
    api = k8s.ApiClient(k8s.Configuration(host=url))
    try:
        yield context.OperatorContext(
            api=api, config=OperatorConfig(), build=BuildSettings(), checkpointer=checkpointer
        )
    finally:
        await api.close()


def make_apply_create(monkeypatch: pytest.MonkeyPatch) -> None:
    """kmock has no server-side apply: a PATCH of a missing object is a 404 there, where a real
    API server creates it. Give apply that meaning back, with the metadata a server adds."""
    original = kube_client.apply

    async def apply(api: k8s.ApiClient, obj: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        try:
            return await original(api, obj, **kwargs)
        except kube_client.ApiError as error:
            if error.status != 404:
                raise
            metadata = {
                "uid": f"{obj['kind'].lower()}-uid",
                "generation": 1,
                "creationTimestamp": "2026-11-23T12:00:00Z",
                **obj["metadata"],
            }
            return await kube_client.request(
                api,
                "POST",
                kind_of(obj).path(obj["metadata"].get("namespace")),
                body={**obj, "metadata": metadata},
            )

    monkeypatch.setattr(kube_client, "apply", apply)


def stored(
    k: kmock.KubernetesEmulator, resource: str, namespace: str, name: str
) -> dict[str, Any] | None:
    """An object as the emulator holds it; None when absent or deleted."""
    try:
        obj = k.objects[resource, namespace, name]
    except KeyError:
        return None
    if getattr(obj, "deleted", False):
        return None
    return dict(obj)


def events(k: kmock.KubernetesEmulator, namespace: str) -> list[dict[str, Any]]:
    """The Events posted in a namespace, as the emulator holds them."""
    found = []
    for key, obj in k.objects.items():
        deleted = getattr(obj, "deleted", False)
        if "events" in str(key[0]) and key[1] == namespace and not deleted:
            found.append(dict(obj))
    return found
