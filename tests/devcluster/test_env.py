"""`kocoon dev env`: what a shell (kubectl, curl, the openai SDK) gets from the local cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from kocoon.devcluster.cluster import DEV_API_KEY_FILE, ClusterState, env_lines

pytestmark = pytest.mark.unit


def _state(directory: Path, **ports: int) -> ClusterState:
    return ClusterState(name="dev", directory=str(directory), network_octet=42, ports=dict(ports))


def test_without_the_router_only_the_cluster_is_exported(tmp_path: Path) -> None:
    lines = env_lines(_state(tmp_path, **{"kube-apiserver": 6443}))
    assert lines == [f"export KUBECONFIG={tmp_path / 'kubeconfig'}", "export KOCOON_CLUSTER=dev"]


def test_with_the_router_its_url_and_the_openai_base_url_are_exported(tmp_path: Path) -> None:
    lines = env_lines(_state(tmp_path, **{"kocoon-router": 41234}))
    assert "export KOCOON_ROUTER_URL=http://127.0.0.1:41234" in lines
    assert "export OPENAI_BASE_URL=http://127.0.0.1:41234/v1" in lines
    assert not any(line.startswith("export OPENAI_API_KEY=") for line in lines)


def test_the_dev_api_key_is_exported_once_made(tmp_path: Path) -> None:
    (tmp_path / DEV_API_KEY_FILE).write_text("kk-secret\n")
    lines = env_lines(_state(tmp_path, **{"kocoon-router": 41234}))
    assert "export OPENAI_API_KEY=kk-secret" in lines
