"""Hibernate and wake real processes and runc containers through the agent's HTTPS API."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from agentkit import AgentHandle, agent_process, pid_alive

from kocoon.agent.criu import CACHED_CRIU_VERSION
from kocoon.agent.models import CheckpointRecord
from kocoon.agent.store import ARCHIVE_NAME, META_NAME, extract_archive

pytestmark = pytest.mark.criu

WORKLOAD = Path(__file__).with_name("workload.py")
HOST_PYTHON = Path("/usr/bin/python3")
SANDBOX = {"namespace": "team-a", "name": "counter"}


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return status


async def wait_status(path: Path, ready: Any, within: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = read_status(path)
        if status is not None and ready(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"status never became ready; last: {read_status(path)}")


def archive_and_meta(agent: AgentHandle, checkpoint_id: str) -> tuple[Path, Path]:
    directory = agent.state_dir / "checkpoints" / checkpoint_id
    return directory / ARCHIVE_NAME, directory / META_NAME


def assert_marker_only_in_plaintext(
    agent: AgentHandle, record: dict[str, Any], marker: str, scratch: Path
) -> None:
    archive, _ = archive_and_meta(agent, record["id"])
    assert marker.encode() not in archive.read_bytes()
    # The marker really is in the checkpointed memory: decrypting shows it, so the check above
    # is about encryption and not about a marker that was never dumped.
    key = (agent.state_dir / "keys" / f"{SANDBOX['namespace']}_{SANDBOX['name']}.key").read_bytes()
    extract_archive(archive, scratch, key, record["sha256"])
    assert any(marker.encode() in p.read_bytes() for p in scratch.rglob("*") if p.is_file())


async def check_refusals(agent: AgentHandle, record: dict[str, Any]) -> None:
    """An incompatible, then a corrupt archive is refused with a clear error; nothing is deleted."""
    archive, meta = archive_and_meta(agent, record["id"])
    original_meta = meta.read_text()
    data = json.loads(original_meta)
    data["compatibility"]["architecture"] = "riscv64"
    meta.write_text(json.dumps(data))
    status, body = await agent.call("POST", f"/v1/checkpoints/{record['id']}/restore", {})
    assert (status, body["reason"]) == (409, "Incompatible"), body
    assert "architecture: archive is riscv64" in body["message"]
    meta.write_text(original_meta)

    sealed = bytearray(archive.read_bytes())
    sealed[len(sealed) // 2] ^= 0x55
    archive.write_bytes(bytes(sealed))
    status, body = await agent.call("POST", f"/v1/checkpoints/{record['id']}/restore", {})
    assert (status, body["reason"]) == (422, "ArchiveCorrupt"), body
    assert "failed authentication" in body["message"]
    assert archive.read_bytes() == bytes(sealed)
    status, kept = await agent.call("GET", f"/v1/checkpoints/{record['id']}")
    assert status == 200
    assert CheckpointRecord.model_validate(kept).sha256 == record["sha256"]


@pytest.fixture
async def agent(tmp_path: Path, criu_binary: Path) -> AsyncIterator[AgentHandle]:
    async with agent_process(
        tmp_path / "agent", extra_args=["--runc-root", str(tmp_path / "runc")]
    ) as handle:
        yield handle


@pytest.fixture
def workload(
    tmp_path: Path, criu_binary: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, str]]:
    """The workload as a plain process in its own session, stdio on /dev/null."""
    status_file = tmp_path / "status.json"
    marker = f"KOCOON-MARKER-{secrets.token_hex(8)}"
    process = subprocess.Popen(
        [sys.executable, str(WORKLOAD), str(status_file), "16", marker],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process, status_file, marker
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_process_hibernates_and_wakes_with_its_memory(
    agent: AgentHandle, workload: tuple[subprocess.Popen[bytes], Path, str], tmp_path: Path
) -> None:
    process, status_file, marker = workload
    before = await wait_status(status_file, lambda s: s["counter"] >= 5)
    status, record = await agent.call(
        "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "process", "pid": process.pid}
    )
    assert status == 201, record
    assert process.wait(10) == -signal.SIGKILL  # CRIU ends the dumped tree
    at_dump = read_status(status_file)
    assert at_dump is not None
    assert record["compatibility"]["criuVersion"] == CACHED_CRIU_VERSION
    assert_marker_only_in_plaintext(agent, record, marker, tmp_path / "plain")

    status, result = await agent.call("POST", f"/v1/checkpoints/{record['id']}/restore", {})
    assert status == 200, result
    restored_pid = result["pid"]
    try:
        assert restored_pid == process.pid  # CRIU restores the original pid
        after = await wait_status(status_file, lambda s: s["counter"] >= at_dump["counter"] + 5)
        assert after["pid"] == process.pid
        assert after["hash"] == before["hash"]
        # It continued where it was: the counter went on from the dump, it did not restart.
        assert after["counter"] < at_dump["counter"] + 100

        status, again = await agent.call(
            "POST",
            "/v1/checkpoints",
            {"sandbox": SANDBOX, "driver": "process", "pid": restored_pid, "leaveRunning": True},
        )
        assert status == 201, again
        assert pid_alive(restored_pid)
        await check_refusals(agent, again)
    finally:
        if restored_pid and pid_alive(restored_pid):
            os.kill(restored_pid, signal.SIGKILL)


# --- runc -----------------------------------------------------------------------------------


def runc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runc", "--root", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def make_bundle(bundle: Path, data: Path, marker: str, megabytes: int) -> None:
    """A bundle whose rootfs borrows the host's /usr read-only: a Python without an image build."""
    rootfs = bundle / "rootfs"
    for name in ("usr", "proc", "dev", "sys", "tmp", "data", "etc"):
        (rootfs / name).mkdir(parents=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        (rootfs / link).symlink_to(f"usr/{link}")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = [
        str(HOST_PYTHON),
        "/data/workload.py",
        "/data/status.json",
        str(megabytes),
        marker,
    ]
    spec["root"]["readonly"] = True
    spec["hostname"] = "sandbox"
    spec["mounts"] += [
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
        {"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "rw"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
    ]
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))


@pytest.fixture
def container(tmp_path: Path, runc_binary: Path) -> Iterator[tuple[str, Path, Path, str]]:
    if not HOST_PYTHON.exists():
        pytest.skip(f"{HOST_PYTHON} is needed inside the test container")
    root, bundle, data = tmp_path / "runc", tmp_path / "bundle", tmp_path / "data"
    data.mkdir()
    shutil.copy(WORKLOAD, data / "workload.py")
    marker = f"KOCOON-MARKER-{secrets.token_hex(8)}"
    make_bundle(bundle, data, marker, megabytes=16)
    cid = f"kocoon-test-{secrets.token_hex(4)}"
    started = runc(root, "run", "--bundle", str(bundle), "--detach", cid)
    assert started.returncode == 0, started.stderr
    try:
        yield cid, root, data / "status.json", marker
    finally:
        runc(root, "delete", "--force", cid)


async def test_runc_container_hibernates_and_wakes_with_its_memory(
    agent: AgentHandle, container: tuple[str, Path, Path, str], tmp_path: Path
) -> None:
    cid, root, status_file, marker = container
    before = await wait_status(status_file, lambda s: s["counter"] >= 5)
    status, record = await agent.call(
        "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "runc", "containerId": cid}
    )
    assert status == 201, record
    assert record["compatibility"]["runtime"] == "runc"
    assert record["target"]["containerId"] == cid
    # The container is gone after the checkpoint; remove any leftover state like the pod would.
    runc(root, "delete", "--force", cid)
    assert runc(root, "state", cid).returncode != 0
    at_dump = read_status(status_file)
    assert at_dump is not None
    await asyncio.sleep(0.3)
    assert read_status(status_file) == at_dump  # nothing runs while hibernated
    assert_marker_only_in_plaintext(agent, record, marker, tmp_path / "plain")

    status, result = await agent.call("POST", f"/v1/checkpoints/{record['id']}/restore", {})
    assert status == 200, result
    assert result["containerId"] == cid
    state = json.loads(runc(root, "state", cid).stdout)
    assert state["status"] == "running"
    after = await wait_status(status_file, lambda s: s["counter"] >= at_dump["counter"] + 5)
    assert after["hash"] == before["hash"]
    assert at_dump["counter"] < after["counter"] < at_dump["counter"] + 100
