"""An S3-compatible server on loopback for the remote-store tests: moto's server, installed by
setup/s3.sh into a virtualenv of its own, run as a process; a gate in front of it makes it
unreachable and reachable again."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from minio import Minio

ENV_SERVER = "KOCOON_S3_SERVER"
ACCESS_KEY = "kocoon-test-access"
SECRET_KEY = "kocoon-test-secret-key"


def server_binary() -> Path | None:
    explicit = os.environ.get(ENV_SERVER)
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("KOCOON_CACHE") or Path.home() / ".cache" / "kocoon")
    candidate = cache / "bin" / "moto_server"
    return candidate if candidate.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """One server process on 127.0.0.1:`port`. It keeps objects in memory only."""

    def __init__(self, binary: Path, log: Path) -> None:
        self.binary = binary
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(self.binary), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"S3 server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"S3 server not ready: {self.log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def client(self) -> Minio:
        """The same client library the agent uses, for setting up and inspecting the bucket."""
        return Minio(
            f"127.0.0.1:{self.port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False
        )


def write_credentials(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    access, secret = directory / "access-key", directory / "secret-key"
    access.write_text(ACCESS_KEY + "\n")
    secret.write_text(SECRET_KEY + "\n")
    return access, secret


class Gate:
    """A TCP forwarder on loopback in front of the server: closing it makes the store
    unreachable (connections refused) while the server keeps its objects; opening it again
    on the same port brings the store back."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None
