"""Helpers of the node tests: run a pod on the real node, read JSON over HTTP."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from kocoon.devcluster import Cluster


def run_pod(cluster: Cluster, manifest: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Create a pod and wait until it is Ready; returns the pod as the API server has it."""
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    cluster.kubectl("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait")
    cluster.apply(manifest)
    waited = cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        f"pod/{name}",
        "-n",
        namespace,
        f"--timeout={int(timeout)}s",
        check=False,
        timeout=timeout + 10,
    )
    if waited.returncode != 0:
        described = cluster.kubectl("describe", "pod", name, "-n", namespace, check=False)
        pytest.fail(f"pod {name} not Ready: {waited.stderr}\n{described.stdout[-2500:]}")
    got = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json")
    pod: dict[str, Any] = json.loads(got.stdout)
    return pod


def get_json(url: str, timeout: float = 5) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body
