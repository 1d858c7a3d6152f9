"""The Secret key provider against the local cluster's API server, as the agent's ServiceAccount
with exactly the RBAC the chart grants it."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from kocoon.agent import crypto
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.drivers.filesystem import FilesystemDriver
from kocoon.agent.errors import KeyInvalid, KeyMissing, KeyUnavailable
from kocoon.agent.keys import (
    COMPONENT_CHECKPOINT_KEY,
    LABEL_COMPONENT,
    LABEL_SANDBOX,
    SECRET_DATA_KEY,
    SecretKeyProvider,
    secret_name,
)
from kocoon.agent.models import CheckpointRequest, RestoreRequest, SandboxRef
from kocoon.agent.service import CheckpointService, ServiceConfig
from kocoon.agent.store import CheckpointStore
from kocoon.devcluster import Cluster, stack

pytestmark = pytest.mark.integration


async def api_client(kubeconfig: Path) -> client.ApiClient:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(configuration=cfg)


@pytest.fixture(scope="module")
def agent_kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stack.component_kubeconfig(cluster, "agent", tmp_path_factory.mktemp("agent"))


@pytest.fixture
async def admin(cluster: Cluster) -> AsyncIterator[Any]:
    api = await api_client(cluster.kubeconfig)
    try:
        yield client.CoreV1Api(api)
    finally:
        await api.close()


@pytest.fixture
async def agent_core(agent_kubeconfig: Path) -> AsyncIterator[Any]:
    """CoreV1Api as the agent's ServiceAccount."""
    api = await api_client(agent_kubeconfig)
    try:
        yield client.CoreV1Api(api)
    finally:
        await api.close()


@pytest.fixture
async def namespace(admin: Any) -> AsyncIterator[str]:
    name = f"keys-{uuid.uuid4().hex[:8]}"
    await admin.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        await admin.delete_namespace(name)


async def read_secret(admin: Any, namespace: str, name: str) -> Any:
    return await admin.read_namespaced_secret(name, namespace)


async def test_a_key_is_created_read_reused_and_deleted(
    admin: Any, agent_core: Any, namespace: str
) -> None:
    keys = SecretKeyProvider(agent_core)
    sandbox = SandboxRef(namespace=namespace, name="s1")
    assert await keys.get(sandbox) is None

    key = await keys.get_or_create(sandbox)
    assert len(key) == crypto.DATA_KEY_BYTES
    assert await keys.get(sandbox) == key
    assert await keys.get_or_create(sandbox) == key  # reused, never replaced
    # Another node's agent reads the same key: archives can be restored anywhere.
    assert await SecretKeyProvider(agent_core).get(sandbox) == key

    secret = await read_secret(admin, namespace, "kocoon-checkpoint-key-s1")
    assert secret.type == "Opaque"
    assert secret.immutable is True
    assert secret.metadata.labels == {
        LABEL_SANDBOX: "s1",
        LABEL_COMPONENT: COMPONENT_CHECKPOINT_KEY,
    }
    assert secret.metadata.annotations == {LABEL_SANDBOX: "s1"}
    # No owner: the key outlives nothing by accident; the agent deletes it when the sandbox
    # is forgotten (DELETE /v1/sandboxes/<namespace>/<name>).
    assert not secret.metadata.owner_references
    assert set(secret.data) == {SECRET_DATA_KEY}
    assert base64.b64decode(secret.data[SECRET_DATA_KEY]) == key
    assert keys.describe(sandbox) == f"Secret {namespace}/kocoon-checkpoint-key-s1"

    other = SandboxRef(namespace=namespace, name="s2")
    assert await keys.get_or_create(other) != key

    await keys.delete(sandbox)
    assert await keys.get(sandbox) is None
    await keys.delete(sandbox)  # already gone: not an error
    assert await keys.get(other) is not None


async def test_agents_racing_to_create_a_key_end_up_with_one(
    agent_core: Any, namespace: str
) -> None:
    sandbox = SandboxRef(namespace=namespace, name="raced")
    nodes = [SecretKeyProvider(agent_core) for _ in range(6)]
    keys = await asyncio.gather(*(n.get_or_create(sandbox) for n in nodes))
    assert len(set(keys)) == 1
    assert await nodes[0].get(sandbox) == keys[0]


async def test_a_long_sandbox_name_gets_its_own_secret(agent_core: Any, namespace: str) -> None:
    keys = SecretKeyProvider(agent_core)
    first = SandboxRef(namespace=namespace, name="a" * 240 + "x")
    second = SandboxRef(namespace=namespace, name="a" * 240 + "y")
    assert len(secret_name(first)) == 253
    assert secret_name(first) != secret_name(second)
    assert await keys.get_or_create(first) != await keys.get_or_create(second)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"other": base64.b64encode(b"x" * 32).decode()}, "has no data.dataKey"),
        ({SECRET_DATA_KEY: base64.b64encode(b"short").decode()}, "holds 5 bytes"),
        # A key written as hex text: 64 bytes, not the 32 of a key.
        ({SECRET_DATA_KEY: base64.b64encode(b"ab" * 32).decode()}, "holds 64 bytes"),
    ],
)
async def test_a_garbled_secret_is_reported_by_name_and_left_alone(
    admin: Any, agent_core: Any, namespace: str, data: dict[str, str], message: str
) -> None:
    sandbox = SandboxRef(namespace=namespace, name="garbled")
    name = secret_name(sandbox)
    await admin.create_namespaced_secret(
        namespace, {"metadata": {"name": name}, "type": "Opaque", "data": data}
    )
    keys = SecretKeyProvider(agent_core)
    for attempt in (keys.get, keys.get_or_create):
        with pytest.raises(KeyInvalid) as raised:
            await attempt(sandbox)
        assert f"Secret {namespace}/{name}" in raised.value.message
        assert message in raised.value.message
    stored = await read_secret(admin, namespace, name)
    assert stored.data == data  # reported, never overwritten


async def test_a_missing_key_fails_the_restore_naming_the_secret(
    admin: Any, agent_core: Any, namespace: str, tmp_path: Path
) -> None:
    service = CheckpointService(
        ServiceConfig(node_name="test-node", scratch_dir=tmp_path / "scratch"),
        CheckpointStore(tmp_path / "checkpoints"),
        SecretKeyProvider(agent_core),
        {"filesystem": FilesystemDriver()},
        CriuTool(),
    )
    sandbox = SandboxRef(namespace=namespace, name="s1")
    record = await service.checkpoint(CheckpointRequest(sandbox=sandbox, driver="filesystem"))
    result = await service.restore(record.id, RestoreRequest())
    assert result.cold_start

    again = await service.checkpoint(CheckpointRequest(sandbox=sandbox, driver="filesystem"))
    await admin.delete_namespaced_secret(secret_name(sandbox), namespace)
    with pytest.raises(KeyMissing) as raised:
        await service.restore(again.id, RestoreRequest())
    assert f"Secret {namespace}/kocoon-checkpoint-key-s1 does not exist" in raised.value.message

    forgotten = SandboxRef(namespace=namespace, name="s2")
    await service.checkpoint(CheckpointRequest(sandbox=forgotten, driver="filesystem"))
    await service.forget_sandbox(forgotten)
    assert await SecretKeyProvider(agent_core).get(forgotten) is None


async def test_the_agent_account_can_do_just_what_keys_need(
    cluster: Cluster, agent_kubeconfig: Path, admin: Any, namespace: str
) -> None:
    def can(verb: str, resource: str) -> bool:
        answer = cluster.kubectl(
            "--kubeconfig", str(agent_kubeconfig), "auth", "can-i", verb, resource,
            "-n", namespace, check=False,
        )  # fmt: skip
        return answer.stdout.strip() == "yes"

    for verb in ("get", "create", "delete"):
        assert can(verb, "secrets"), verb
    for verb in ("list", "watch", "update", "patch", "deletecollection"):
        assert not can(verb, "secrets"), verb
    for verb, resource in (
        ("get", "nodes"),
        ("get", "pods"),
        ("get", "configmaps"),
        ("create", "pods"),
        ("get", "sandboxes.kocoon.io"),
    ):
        assert not can(verb, resource), (verb, resource)


async def test_without_rights_the_error_names_the_secret_and_the_answer(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    # An account with no role at all: what the agent sees when its ClusterRole lacks the rule.
    cluster.kubectl("create", "serviceaccount", "no-rights", "-n", namespace)
    kubeconfig = cluster.service_account_kubeconfig(
        namespace, "no-rights", tmp_path / "no-rights.kubeconfig"
    )
    api = await api_client(kubeconfig)
    try:
        keys = SecretKeyProvider(client.CoreV1Api(api))
        sandbox = SandboxRef(namespace=namespace, name="s1")
        with pytest.raises(KeyUnavailable) as raised:
            await keys.get_or_create(sandbox)
        assert raised.value.status == 503
        assert f"Secret {namespace}/kocoon-checkpoint-key-s1" in raised.value.message
        assert "403 Forbidden" in raised.value.message
    finally:
        await api.close()
