"""Kubernetes Events about Kocoon's objects: what happened and why, for `kubectl describe`."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client as k8s

from kocoon.kube.client import ApiError, request
from kocoon.kube.resources import EVENT

log = logging.getLogger(__name__)

COMPONENT = "kocoon-operator"
NORMAL = "Normal"
WARNING = "Warning"


def event_manifest(
    involved: dict[str, Any], event_type: str, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    metadata = involved["metadata"]
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{metadata['name']}.{uuid.uuid4().hex[:12]}",
            "namespace": metadata["namespace"],
        },
        "involvedObject": {
            "apiVersion": involved["apiVersion"],
            "kind": involved["kind"],
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata.get("uid"),
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post(
    api: k8s.ApiClient, involved: dict[str, Any], event_type: str, reason: str, message: str
) -> None:
    """Post an Event; failing to post one is logged, never fatal to a reconcile."""
    body = event_manifest(involved, event_type, reason, message, datetime.now(UTC))
    try:
        await request(api, "POST", EVENT.path(body["metadata"]["namespace"]), body=body)
    except ApiError as error:
        log.warning("could not post event %s: %s", reason, error)
