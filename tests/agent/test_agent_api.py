from __future__ import annotations

from pathlib import Path

import pytest
from agentkit import in_process_agent

from kocoon.agent.drivers.filesystem import FilesystemDriver
from kocoon.agent.drivers.gvisor import GvisorDriver
from kocoon.agent.drivers.kubelet import KubeletConfig, KubeletDriver
from kocoon.agent.drivers.vmsnapshot import VmSnapshotDriver

pytestmark = pytest.mark.unit

SANDBOX = {"namespace": "team-a", "name": "s1"}


async def test_requests_without_or_with_a_wrong_token_are_refused(tmp_path: Path) -> None:
    async with in_process_agent(tmp_path) as agent:
        async with agent.session(token="") as s, s.get("/v1/checkpoints") as r:
            assert r.status == 401
            assert (await r.json())["reason"] == "Unauthorized"
        async with agent.session(token=agent.token + "x") as s, s.get("/v1/node") as r:
            assert r.status == 401
        async with agent.session() as s:
            async with s.get("/v1/checkpoints", headers={"Authorization": "Basic abc"}) as r:
                assert r.status == 401
            async with s.get("/v1/checkpoints") as r:
                assert r.status == 200
        # Health and metrics carry no sandbox data and stay open for probes and scrapers.
        async with agent.session(token="") as s, s.get("/healthz") as r:
            assert r.status == 200


async def test_filesystem_checkpoint_lifecycle(tmp_path: Path) -> None:
    async with in_process_agent(tmp_path) as agent:
        status, record = await agent.call(
            "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "filesystem"}
        )
        assert status == 201, record
        assert record["sandbox"] == SANDBOX
        assert record["compatibility"]["architecture"]
        assert len(record["sha256"]) == 64
        status, listed = await agent.call("GET", "/v1/checkpoints?namespace=team-a&name=s1")
        assert [r["id"] for r in listed["items"]] == [record["id"]]
        status, restored = await agent.call("POST", f"/v1/checkpoints/{record['id']}/restore", {})
        assert status == 200, restored
        assert restored["coldStart"] is True
        status, _ = await agent.call("DELETE", f"/v1/checkpoints/{record['id']}")
        assert status == 204
        status, body = await agent.call("GET", f"/v1/checkpoints/{record['id']}")
        assert (status, body["reason"]) == (404, "NotFound")


async def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    async with in_process_agent(tmp_path) as agent:
        ids = []
        for _ in range(3):
            _, record = await agent.call(
                "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "filesystem"}
            )
            ids.append(record["id"])
        status, result = await agent.call("POST", "/v1/prune", {"sandbox": SANDBOX, "keepLast": 1})
        assert status == 200
        assert sorted(result["deleted"]) == sorted(ids[:2])
        _, listed = await agent.call("GET", "/v1/checkpoints")
        assert [r["id"] for r in listed["items"]] == [ids[2]]


async def test_invalid_requests_name_the_field(tmp_path: Path) -> None:
    async with in_process_agent(tmp_path) as agent:
        status, body = await agent.call(
            "POST",
            "/v1/checkpoints",
            {"sandbox": {"namespace": "Bad_NS", "name": "x"}, "driver": "filesystem"},
        )
        assert status == 400
        assert "sandbox.namespace" in body["message"]
        status, body = await agent.call(
            "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "nope"}
        )
        assert (status, body["reason"]) == (400, "DriverUnknown")
        assert "filesystem" in body["message"]


async def test_node_facts_report_unsupported_drivers_with_reasons(tmp_path: Path) -> None:
    drivers = {
        "filesystem": FilesystemDriver(),
        # Port 1 on loopback: nothing listens there.
        "kubelet": KubeletDriver(KubeletConfig(url="https://127.0.0.1:1")),
        "vmsnapshot": VmSnapshotDriver(),
        "gvisor": GvisorDriver(),
    }
    async with in_process_agent(tmp_path, drivers) as agent:
        status, facts = await agent.call("GET", "/v1/node")
        assert status == 200
        by_name = {d["name"]: d for d in facts["drivers"]}
        assert by_name["filesystem"]["available"] is True
        assert by_name["kubelet"]["available"] is False
        assert "no kubelet reachable at https://127.0.0.1:1" in by_name["kubelet"]["detail"]
        status, body = await agent.call(
            "POST",
            "/v1/checkpoints",
            {"sandbox": SANDBOX, "driver": "kubelet", "pod": "p", "container": "c"},
        )
        assert (status, body["reason"]) == (422, "DriverUnavailable")
        assert "no kubelet reachable" in body["message"]


async def test_forgetting_a_sandbox_deletes_its_checkpoints_and_key(tmp_path: Path) -> None:
    async with in_process_agent(tmp_path) as agent:
        _, record = await agent.call(
            "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "filesystem"}
        )
        other = {"namespace": "team-b", "name": "s2"}
        _, kept = await agent.call(
            "POST", "/v1/checkpoints", {"sandbox": other, "driver": "filesystem"}
        )
        assert (tmp_path / "keys" / "team-a_s1.key").exists()
        status, result = await agent.call("DELETE", "/v1/sandboxes/team-a/s1")
        assert status == 200
        assert result["deleted"] == [record["id"]]
        assert not (tmp_path / "keys" / "team-a_s1.key").exists()
        _, listed = await agent.call("GET", "/v1/checkpoints")
        assert [r["id"] for r in listed["items"]] == [kept["id"]]


async def test_asking_again_is_safe_for_checkpoint_and_restore(tmp_path: Path) -> None:
    # An operator that crashed after asking asks again with the same id: it must get the
    # stored checkpoint back, and a restore that already happened must not happen twice.
    async with in_process_agent(tmp_path) as agent:
        request = {"sandbox": SANDBOX, "driver": "filesystem", "id": "s1-podabc"}
        first_status, first = await agent.call("POST", "/v1/checkpoints", request)
        again_status, again = await agent.call("POST", "/v1/checkpoints", request)
        assert first_status in (200, 201)
        assert again_status in (200, 201)
        assert again["id"] == first["id"] == "s1-podabc"
        assert again["created"] == first["created"]
        other = {
            "sandbox": {"namespace": "team-b", "name": "x"},
            "driver": "filesystem",
            "id": "s1-podabc",
        }
        refused_status, refused = await agent.call("POST", "/v1/checkpoints", other)
        assert refused_status == 400
        assert "belongs to team-a/s1" in refused["message"]

        path = "/v1/checkpoints/s1-podabc/restore"
        status, restored = await agent.call("POST", path, {})
        assert status == 200, restored
        status, repeated = await agent.call("POST", path, {})
        assert status == 200
        assert repeated == restored
