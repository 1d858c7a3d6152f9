"""A real process hibernated by `kocoon agent` (a process, as the DaemonSet runs it) with an S3
store configured: the archive is uploaded, the node's copy is wiped, and the restore brings
the process back from the bucket with its memory intact."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import agent_process, pid_alive
from s3kit import S3Server, server_binary, write_credentials
from test_agent_criu import WORKLOAD, read_status, wait_status

from kocoon.agent.store import ARCHIVE_NAME

pytestmark = [pytest.mark.criu, pytest.mark.s3]

SANDBOX = {"namespace": "team-a", "name": "remote-counter"}


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    binary = server_binary()
    if binary is None:
        pytest.skip("no S3 test server: run setup/s3.sh (make s3)")
    server = S3Server(binary, tmp_path / "s3.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def workload(
    tmp_path: Path, criu_binary: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, str]]:
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


async def test_a_process_wakes_from_the_bucket_after_the_node_lost_its_copy(
    s3: S3Server, tmp_path: Path, workload: tuple[subprocess.Popen[bytes], Path, str]
) -> None:
    process, status_file, marker = workload
    bucket = "kocoon-checkpoints"
    s3.client().make_bucket(bucket)
    access, secret = write_credentials(tmp_path / "s3-credentials")
    restored_pid = None
    s3_args = [
        "--s3-endpoint", s3.endpoint, "--s3-bucket", bucket, "--s3-prefix", "nodes",
        "--s3-access-key-file", str(access), "--s3-secret-key-file", str(secret),
        "--s3-part-size", "5",
    ]  # fmt: skip
    try:
        async with agent_process(tmp_path / "agent", extra_args=s3_args) as agent:
            before = await wait_status(status_file, lambda s: s["counter"] >= 5)
            status, record = await agent.call(
                "POST",
                "/v1/checkpoints",
                {"sandbox": SANDBOX, "driver": "process", "pid": process.pid},
            )
            assert status == 201, record
            assert process.wait(10) == -signal.SIGKILL
            at_dump = read_status(status_file)
            assert at_dump is not None
            copy = record["remote"]
            assert copy["state"] == "Uploaded", copy
            assert copy["key"] == f"nodes/{record['id']}/{ARCHIVE_NAME}"
            local_dir = agent.state_dir / "checkpoints" / record["id"]
            response = s3.client().get_object(bucket, copy["key"])
            try:
                uploaded = response.read()
            finally:
                response.close()
                response.release_conn()
            assert uploaded == (local_dir / ARCHIVE_NAME).read_bytes()
            assert marker.encode() not in uploaded  # the process's memory left only sealed

            shutil.rmtree(local_dir)
            status, result = await agent.call("POST", f"/v1/checkpoints/{record['id']}/restore", {})
            assert status == 200, result
            restored_pid = result["pid"]
            assert restored_pid == process.pid
            after = await wait_status(status_file, lambda s: s["counter"] >= at_dump["counter"] + 5)
            assert after["hash"] == before["hash"]  # the memory came back through the bucket
            assert after["counter"] < at_dump["counter"] + 100
            log = (tmp_path / "agent" / "agent.log").read_text()
            assert "restore: downloaded from the remote store" in log
    finally:
        if restored_pid and pid_alive(restored_pid):
            os.kill(restored_pid, signal.SIGKILL)
