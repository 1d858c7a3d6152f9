"""The kube-backed parts against the local cluster: Lease writes, wake races, Secret watch.

The `cluster` fixture (tests/conftest.py) yields an object with `.kubeconfig`.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import pytest
from kubernetes_asyncio import client

from kocoon.router import kube
from kocoon.router.activity import ActivitySnapshot
from kocoon.router.auth import hash_token
from kocoon.router.table import RoutingTable, TargetKey, TargetKind

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(cluster: Any) -> Any:
    api = await kube.load_config(cluster.kubeconfig)
    yield api
    await api.close()


@pytest.fixture
async def namespace(api: Any) -> Any:
    name = f"router-{uuid.uuid4().hex[:8]}"
    core: Any = client.CoreV1Api(api)  # dict bodies: accepted at run time, not in the stubs
    await core.create_namespace({"metadata": {"name": name}})
    yield name
    await core.delete_namespace(name)


async def test_renewals_create_then_patch_the_lease(api: Any, namespace: str) -> None:
    key = TargetKey(TargetKind.SESSION, namespace, "s1")
    writer = kube.LeaseWriter(api, "router-test", interval=5.0)
    await writer.renew(key, ActivitySnapshot(1, 1_700_000_000.0))
    await writer.renew(key, ActivitySnapshot(0, 1_700_000_001.0))
    lease = await client.CoordinationV1Api(api).read_namespaced_lease(
        kube.lease_name(key), namespace
    )
    assert lease.spec.holder_identity == "router-test"
    assert lease.spec.renew_time is not None
    assert lease.metadata.annotations[kube.IN_FLIGHT_ANNOTATION] == "0"


@pytest.mark.parametrize("lease_exists", [False, True])
async def test_racing_replicas_write_one_wake_request(
    api: Any, namespace: str, lease_exists: bool
) -> None:
    key = TargetKey(TargetKind.SANDBOX, namespace, "box")
    replicas = [kube.LeaseWriter(api, f"router-{i}", interval=5.0) for i in range(8)]
    if lease_exists:
        await replicas[0].renew(key, ActivitySnapshot(0, 1_700_000_000.0))
    wrote = await asyncio.gather(*(r.write_wake_request(key) for r in replicas))
    assert sum(wrote) == 1
    assert not await replicas[0].write_wake_request(key)  # still pending: nothing to write


async def test_watcher_feeds_token_secrets_into_the_table(api: Any, namespace: str) -> None:
    table = RoutingTable()
    watcher = kube.TableWatcher(api, table, (namespace,))
    core: Any = client.CoreV1Api(api)  # dict bodies: accepted at run time, not in the stubs
    secret = {
        "metadata": {
            "name": "s1-token",
            "labels": {kube.TOKEN_SECRET_LABEL: kube.TOKEN_SECRET_LABEL_VALUE},
        },
        "data": {kube.TOKEN_KEY: base64.b64encode(b"first").decode()},
    }
    await core.create_namespaced_secret(namespace, secret)
    changed = asyncio.Event()
    table.listeners.append(changed.set)

    async def until(expected: frozenset[bytes]) -> None:
        while table.secrets.get((namespace, "s1-token")) != expected:
            changed.clear()
            await changed.wait()

    task = asyncio.create_task(watcher.run())
    try:
        async with asyncio.timeout(20):
            await until(frozenset({hash_token("first")}))
            assert f"secrets:token@{namespace}" in watcher.synced
            # rotation arrives through the watch
            secret["data"] = {
                kube.TOKEN_KEY: base64.b64encode(b"second").decode(),
                kube.PREVIOUS_TOKEN_KEY: base64.b64encode(b"first").decode(),
            }
            await core.replace_namespaced_secret("s1-token", namespace, secret)
            await until(frozenset({hash_token("second"), hash_token("first")}))
    finally:
        task.cancel()


async def test_watcher_feeds_api_keys_into_the_callers(api: Any, namespace: str) -> None:
    table = RoutingTable()
    watcher = kube.TableWatcher(api, table, (namespace,))
    core: Any = client.CoreV1Api(api)
    secret = {
        "metadata": {
            "name": "team-key",
            "labels": {kube.API_KEY_SECRET_LABEL: "true"},
            "annotations": {kube.API_KEY_MODELS_ANNOTATION: "smollm2"},
        },
        "data": {kube.API_KEY_KEY: base64.b64encode(b"sk-live").decode()},
    }
    await core.create_namespaced_secret(namespace, secret)
    unlabelled = {  # an ordinary Secret is never read
        "metadata": {"name": "other"},
        "data": {kube.API_KEY_KEY: base64.b64encode(b"sk-other").decode()},
    }
    await core.create_namespaced_secret(namespace, unlabelled)
    changed = asyncio.Event()
    table.listeners.append(changed.set)

    async def until(probe: Any) -> None:
        while not probe():
            changed.clear()
            await changed.wait()

    task = asyncio.create_task(watcher.run())
    try:
        async with asyncio.timeout(20):
            await until(lambda: (namespace, "team-key") in table.api_keys)
            caller = table.callers.identify("Bearer sk-live")
            assert not isinstance(caller, str)
            assert (caller.namespace, caller.served_names) == (namespace, {"smollm2"})
            assert table.callers.identify("Bearer sk-other") == "wrong"
            await core.delete_namespaced_secret("team-key", namespace)
            await until(lambda: (namespace, "team-key") not in table.api_keys)
            assert table.callers.identify("Bearer sk-live") == "wrong"
    finally:
        task.cancel()
