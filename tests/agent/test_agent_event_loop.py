"""Slow filesystem work (removing a checkpoint's archive, possibly gigabytes) runs off the
agent's event loop: the agent keeps answering other requests meanwhile."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from agentkit import in_process_agent

from kocoon.agent.store import CheckpointStore

pytestmark = pytest.mark.unit

SANDBOX = {"namespace": "team-a", "name": "s1"}


async def test_the_agent_answers_while_a_checkpoint_is_being_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    delete = CheckpointStore.delete

    def slow_delete(self: CheckpointStore, checkpoint_id: str) -> None:
        started.set()
        # Held until the test has had its answer: on the event loop, that answer never comes.
        release.wait(timeout=30)
        delete(self, checkpoint_id)

    monkeypatch.setattr(CheckpointStore, "delete", slow_delete)
    async with in_process_agent(tmp_path) as agent:
        status, record = await agent.call(
            "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "filesystem"}
        )
        assert status == 201, record
        deleting = asyncio.create_task(agent.call("DELETE", f"/v1/checkpoints/{record['id']}"))
        try:
            assert await asyncio.to_thread(started.wait, 30), "the delete never started"
            async with agent.session(token="") as s:
                response = await asyncio.wait_for(s.get("/healthz"), timeout=10)
                assert response.status == 200
            assert not deleting.done()
        finally:
            release.set()
        status, _ = await deleting
        assert status == 204
