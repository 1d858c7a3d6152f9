"""A loaded llama-server checkpointed and restored with CRIU (the agent's process driver):
the restored engine answers exactly as before, streamed too, without loading the model again."""

from __future__ import annotations

from pathlib import Path

import pytest
from llamakit import SERVED_NAME, ask, ask_streamed

from kocoon.agent.drivers.base import CheckpointTarget, RestoreTarget
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.drivers.process import ProcessDriver
from kocoon.agent.models import SandboxRef
from kocoon.devcluster import engines
from kocoon.devcluster.processes import free_port

pytestmark = [pytest.mark.criu, pytest.mark.engine]

REF = SandboxRef(namespace="models", name="smollm2")


def directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


async def test_restored_engine_answers_the_same_without_reloading(
    engine_installed: None, criu_binary: Path, tmp_path: Path
) -> None:
    driver = ProcessDriver(CriuTool(criu_binary))
    images, work = tmp_path / "images", tmp_path / "work"
    images.mkdir()
    work.mkdir()
    server = engines.start_local(tmp_path / "server.log", port=free_port(), served_name=SERVED_NAME)
    restored_pid: int | None = None
    try:
        before = ask(server.base_url)
        streamed_before, _ = ask_streamed(server.base_url)
        loads = server.output().count("model loaded")
        assert loads == 1, server.output()[-2000:]

        # The clients have closed; the dump starts once the server has closed its side too.
        engines.wait_connections_closed(server.pid)
        dumped = await driver.checkpoint(CheckpointTarget(REF, pid=server.pid), images, work)
        if server.process is not None:
            server.process.wait(10)  # CRIU ends the dumped tree
        assert not server.running()
        # The mmapped model file is not copied into the images: they stay far below its size.
        image_bytes = directory_bytes(images)
        assert image_bytes < engines.SMOLLM2_SIZE, image_bytes

        restored = await driver.restore(RestoreTarget(REF, dict(dumped.target)), images, work)
        restored_pid = restored.pid
        assert restored_pid == server.pid  # CRIU gives the tree its pid back
        engines.wait_healthy(server.base_url, timeout=30)
        assert ask(server.base_url) == before
        pieces, finish = ask_streamed(server.base_url)
        assert pieces == streamed_before
        assert finish in {"stop", "length"}
        # It answered from the restored memory: the model was not loaded a second time.
        assert server.output().count("model loaded") == loads
    finally:
        server.stop()
