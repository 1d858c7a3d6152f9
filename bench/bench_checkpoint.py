"""Hibernate and wake a 100 MB and a 1 GB process through the agent, against raw CRIU.

    sudo .venv/bin/python bench/bench_checkpoint.py [--sizes 100,1024] [--repeat 2]
        [--store-dir DIR] [--scratch-dir DIR]

For each size, the same kind of process (random data of that size, its SHA-256 checked after
every restore) is dumped and restored twice in the same run:
- raw:   `criu dump -t PID -D DIR` then `criu restore -D DIR -d`, images in the store directory;
- agent: `POST /v1/checkpoints` (process driver) then `POST /v1/checkpoints/{id}/restore`
         against a `kocoon agent` process over HTTPS: dump, tar, encrypt, hash, store; then
         verify, decrypt, extract, restore.
It prints a table (times, agent/raw ratios, archive size, encryption cost per GB) and writes
JSON to bench/results/. Needs root and CRIU (setup/criu.sh). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from kocoon.agent import crypto
from kocoon.agent import local as local_agent
from kocoon.agent.criu import find_criu
from kocoon.devcluster.processes import free_port

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 1 << 30

WORKLOAD = r"""
import hashlib, json, os, sys, time
status, megabytes = sys.argv[1], int(sys.argv[2])
null = os.open("/dev/null", os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
block = bytearray(os.urandom(megabytes << 20))
digest = hashlib.sha256(block).hexdigest()
counter = 0
while True:
    counter += 1
    if os.path.exists(status + ".rehash"):
        digest = hashlib.sha256(block).hexdigest()
        os.unlink(status + ".rehash")
    with open(status + ".tmp", "w") as f:
        json.dump({"counter": counter, "hash": digest, "pid": os.getpid()}, f)
    os.rename(status + ".tmp", status)
    time.sleep(0.1)
"""


@dataclass
class Row:
    size_mb: int
    mode: str
    run: int
    checkpoint_s: float
    restore_s: float
    image_bytes: int
    archive_bytes: int
    dump_s: float | None = None
    archive_s: float | None = None
    extract_s: float | None = None
    criu_restore_s: float | None = None
    memory_intact: bool = False


class Workload:
    def __init__(self, directory: Path, megabytes: int) -> None:
        self.status = directory / f"status-{megabytes}.json"
        self.status.unlink(missing_ok=True)
        script = directory / "workload.py"
        script.write_text(WORKLOAD)
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(self.status), str(megabytes)],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.pid = self.process.pid
        self.hash = self.wait(lambda s: True)["hash"]

    def read(self) -> dict[str, Any] | None:
        try:
            status: dict[str, Any] = json.loads(self.status.read_text())
            return status
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait(self, ready: Any, limit: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            status = self.read()
            if status is not None and ready(status):
                return status
            time.sleep(0.02)
        raise RuntimeError(f"workload not ready; last status {self.read()}")

    def reap(self) -> None:
        self.process.wait(30)

    def memory_intact_after_restore(self) -> bool:
        """Asks the restored process to re-hash its memory and compares with the original."""
        before = self.wait(lambda s: True)["counter"]
        Path(f"{self.status}.rehash").touch()
        status = self.wait(
            lambda s: s["counter"] > before + 1 and not Path(f"{self.status}.rehash").exists()
        )
        status = self.wait(lambda s: s["counter"] > status["counter"])
        return bool(status["hash"] == self.hash)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def raw_round(criu: Path, work: Path, store: Path, megabytes: int, run: int) -> Row:
    workload = Workload(work, megabytes)
    images = store / f"raw-{megabytes}-{run}"
    images.mkdir(parents=True)
    try:
        started = time.perf_counter()
        dump = subprocess.run(
            [str(criu), "dump", "-t", str(workload.pid), "-D", str(images), "-o", "dump.log"],
            capture_output=True,
            text=True,
            check=False,
        )
        checkpoint_s = time.perf_counter() - started
        if dump.returncode != 0:
            raise RuntimeError(f"criu dump failed: {(images / 'dump.log').read_text()[-2000:]}")
        workload.reap()
        image_bytes = dir_bytes(images)
        started = time.perf_counter()
        restore = subprocess.run(
            [str(criu), "restore", "-D", str(images), "-d", "-o", "restore.log"],
            capture_output=True,
            text=True,
            check=False,
        )
        restore_s = time.perf_counter() - started
        if restore.returncode != 0:
            raise RuntimeError(
                f"criu restore failed: {(images / 'restore.log').read_text()[-2000:]}"
            )
        intact = workload.memory_intact_after_restore()
        return Row(
            megabytes,
            "raw",
            run,
            checkpoint_s,
            restore_s,
            image_bytes,
            image_bytes,
            memory_intact=intact,
        )
    finally:
        workload.kill()
        shutil.rmtree(images, ignore_errors=True)


class Agent:
    def __init__(self, root: Path, store: Path, scratch: Path) -> None:
        creds = local_agent.credentials(root)
        self.token = creds.token
        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        self.ssl = creds.client_context()
        self.log = (root / "agent.log").open("wb")
        self.process = subprocess.Popen(
            local_agent.command(creds, port, store, node_name="bench", scratch_dir=scratch),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.token}"},
                connector=aiohttp.TCPConnector(ssl=self.ssl),
                timeout=aiohttp.ClientTimeout(total=1800),
            ) as session,
            session.request(method, self.url + path, json=body) as response,
        ):
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def ready(self) -> None:
        for _ in range(300):
            try:
                status, _ = await self.call("GET", "/v1/node")
                if status == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("agent did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


async def agent_round(agent: Agent, work: Path, megabytes: int, run: int) -> Row:
    workload = Workload(work, megabytes)
    sandbox = {"namespace": "bench", "name": f"p{megabytes}"}
    try:
        started = time.perf_counter()
        status, record = await agent.call(
            "POST",
            "/v1/checkpoints",
            {"sandbox": sandbox, "driver": "process", "pid": workload.pid},
        )
        checkpoint_s = time.perf_counter() - started
        if status != 201:
            raise RuntimeError(f"agent checkpoint failed: {record}")
        workload.reap()
        started = time.perf_counter()
        status, result = await agent.call("POST", f"/v1/checkpoints/{record['id']}/restore", {})
        restore_s = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"agent restore failed: {result}")
        intact = workload.memory_intact_after_restore()
        await agent.call("DELETE", f"/v1/checkpoints/{record['id']}")
        return Row(
            megabytes,
            "agent",
            run,
            checkpoint_s,
            restore_s,
            record["imageBytes"],
            record["sizeBytes"],
            dump_s=record["dumpSeconds"],
            archive_s=record["archiveSeconds"],
            extract_s=result["extractSeconds"],
            criu_restore_s=result["restoreSeconds"],
            memory_intact=intact,
        )
    finally:
        workload.kill()


def crypto_throughput(megabytes: int = 512) -> dict[str, float]:
    """Encryption alone, in memory: seconds per GiB for sealing and for opening."""
    data = memoryview(os.urandom(megabytes << 20))
    key = crypto.new_data_key()

    def seal(sink: Any) -> float:
        started = time.perf_counter()
        encryptor = crypto.ChunkEncryptor(key, sink)
        for offset in range(0, len(data), 1 << 20):
            encryptor.write(data[offset : offset + (1 << 20)])
        encryptor.close()
        return time.perf_counter() - started

    # Timed with a sink that drops records: the cipher's cost, without memory or disk.
    seal_s = seal(lambda record: None)
    records: list[bytes] = []
    seal(lambda record: records.append(bytes(record)))
    sealed = b"".join(records)
    records.clear()
    position = 0

    def read(size: int) -> bytes:
        nonlocal position
        piece = sealed[position : position + size]
        position += len(piece)
        return piece

    started = time.perf_counter()
    for _ in crypto.ChunkDecryptor(key, read).records():
        pass
    open_s = time.perf_counter() - started
    gib = len(data) / GIB
    return {
        "encrypt_s_per_gib": seal_s / gib,
        "decrypt_s_per_gib": open_s / gib,
        "encrypt_gib_per_s": gib / seal_s,
        "decrypt_gib_per_s": gib / open_s,
    }


def summarize(rows: list[Row]) -> list[dict[str, Any]]:
    summary = []
    for size in sorted({r.size_mb for r in rows}):
        raw = [r for r in rows if r.size_mb == size and r.mode == "raw"]
        agent = [r for r in rows if r.size_mb == size and r.mode == "agent"]
        if not raw or not agent:
            continue

        def best(rs: list[Row], attr: str) -> float:
            return min(float(getattr(r, attr)) for r in rs)

        entry = {
            "size_mb": size,
            "raw_dump_s": best(raw, "checkpoint_s"),
            "raw_restore_s": best(raw, "restore_s"),
            "agent_checkpoint_s": best(agent, "checkpoint_s"),
            "agent_restore_s": best(agent, "restore_s"),
            "agent_dump_s": best(agent, "dump_s"),
            "agent_archive_s": best(agent, "archive_s"),
            "agent_extract_s": best(agent, "extract_s"),
            "agent_criu_restore_s": best(agent, "criu_restore_s"),
            "image_bytes": agent[0].image_bytes,
            "archive_bytes": agent[0].archive_bytes,
            "memory_intact": all(r.memory_intact for r in raw + agent),
        }
        entry["checkpoint_ratio"] = entry["agent_checkpoint_s"] / entry["raw_dump_s"]
        entry["restore_ratio"] = entry["agent_restore_s"] / entry["raw_restore_s"]
        entry["archive_s_per_gib"] = entry["agent_archive_s"] / (entry["image_bytes"] / GIB)
        summary.append(entry)
    return summary


def print_table(summary: list[dict[str, Any]], crypto_only: dict[str, float]) -> None:
    header = (
        f"{'size':>6} | {'raw dump':>8} {'agent ckpt':>10} {'ratio':>6} | "
        f"{'raw rest':>8} {'agent rest':>10} {'ratio':>6} | {'archive MB':>10} "
        f"{'arch s/GiB':>10} | intact"
    )
    print(header)
    print("-" * len(header))
    for e in summary:
        print(
            f"{e['size_mb']:>4}MB | {e['raw_dump_s']:>7.2f}s {e['agent_checkpoint_s']:>9.2f}s "
            f"{e['checkpoint_ratio']:>6.2f} | {e['raw_restore_s']:>7.2f}s "
            f"{e['agent_restore_s']:>9.2f}s {e['restore_ratio']:>6.2f} | "
            f"{e['archive_bytes'] / 1e6:>10.1f} {e['archive_s_per_gib']:>10.2f} | "
            f"{e['memory_intact']}"
        )
        print(
            f"       agent split: dump {e['agent_dump_s']:.2f}s "
            f"+ archive {e['agent_archive_s']:.2f}s; extract {e['agent_extract_s']:.2f}s "
            f"+ criu restore {e['agent_criu_restore_s']:.2f}s"
        )
    print(
        f"encryption alone (in memory): seal {crypto_only['encrypt_gib_per_s']:.2f} GiB/s "
        f"({crypto_only['encrypt_s_per_gib']:.3f} s/GiB), "
        f"open {crypto_only['decrypt_gib_per_s']:.2f} GiB/s "
        f"({crypto_only['decrypt_s_per_gib']:.3f} s/GiB)"
    )


async def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench_checkpoint: needs root (CRIU)", file=sys.stderr)
        return 2
    criu = find_criu()
    if criu is None:
        print("bench_checkpoint: no CRIU; run setup/criu.sh", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(tempfile.mkdtemp(prefix="kocoon-bench-", dir=args.store_dir))
    scratch = Path(
        tempfile.mkdtemp(prefix="kocoon-bench-scratch-", dir=args.scratch_dir or args.store_dir)
    )
    work = base / "work"
    work.mkdir()
    agent = Agent(base / "agent", base / "agent-state", scratch)
    rows: list[Row] = []
    try:
        await agent.ready()
        for size in sizes:
            for repeat in range(args.repeat):
                print(f"[bench] {size} MB run {repeat + 1}: raw criu", flush=True)
                rows.append(raw_round(criu, work, base / "raw", size, repeat))
                print(f"[bench]   {rows[-1]}", flush=True)
                print(f"[bench] {size} MB run {repeat + 1}: agent", flush=True)
                rows.append(await agent_round(agent, work, size, repeat))
                print(f"[bench]   {rows[-1]}", flush=True)
    finally:
        agent.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    crypto_only = crypto_throughput()
    summary = summarize(rows)
    print()
    print_table(summary, crypto_only)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"checkpoint-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "created": stamp,
                "machine": {
                    "kernel": platform.release(),
                    "arch": platform.machine(),
                    "cpus": os.cpu_count(),
                },
                "criu": str(criu),
                "store_dir": args.store_dir or tempfile.gettempdir(),
                "scratch_dir": args.scratch_dir,
                "runs": [asdict(r) for r in rows],
                "summary": summary,
                "crypto_only": crypto_only,
            },
            indent=2,
        )
    )
    print(f"results: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="100,1024", help="workload sizes in MB, comma-separated")
    p.add_argument(
        "--repeat", type=int, default=2, help="runs per size and mode (best is reported)"
    )
    p.add_argument(
        "--store-dir",
        default="/var/tmp",
        help="where raw images and agent archives go (a disk, like a node's store)",
    )
    p.add_argument(
        "--scratch-dir",
        help="the agent's scratch for plaintext images (default: beside its store, like the "
        "agent's own default; tmpfs made CRIU restore slower on the machines measured)",
    )
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
