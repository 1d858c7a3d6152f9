"""Starting, watching and stopping the local cluster's processes, by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


class ComponentFailedError(RuntimeError):
    """A component exited or never became healthy; the message carries its last log lines."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(
    argv: Sequence[str | os.PathLike[str]], log_path: Path, env: dict[str, str] | None = None
) -> int:
    """Start a component in its own session (it outlives the caller); output goes to a log."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [os.fspath(arg) for arg in argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    return proc.pid


def _reap(pid: int) -> None:
    # Our own children stay zombies until waited for; others were reparented and are not ours.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int) -> bool:
    _reap(pid)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in {"Z", "X"}


def stop(pid: int, grace_seconds: float = 10.0) -> None:
    """SIGTERM the component's process group, then SIGKILL what is left after the grace time."""
    if not alive(pid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_healthy(
    name: str,
    url: str,
    pid: int,
    log_path: Path,
    *,
    context: ssl.SSLContext | None = None,
    timeout: float = 60.0,
) -> float:
    """Poll `url` until it answers 200; fail early if the process exits. Returns seconds waited."""
    start = time.monotonic()
    last_error = ""
    while time.monotonic() - start < timeout:
        if not alive(pid):
            raise ComponentFailedError(f"{name} exited during start-up:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError) as error:
            last_error = str(error)
        time.sleep(0.1)
    raise ComponentFailedError(
        f"{name} not healthy at {url} after {timeout:.0f} s ({last_error}):\n{tail(log_path)}"
    )
