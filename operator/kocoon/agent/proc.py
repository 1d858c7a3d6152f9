"""Running node tools (criu, runc, ...) as subprocesses, with output captured to files.

Output goes to temporary files, not pipes: a restored container may inherit the tool's
descriptors and keep a pipe open forever, which would hang a reader waiting for EOF.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 15) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])


async def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    time_limit: float = DEFAULT_TIMEOUT_SECONDS,
    output: tuple[int, int] | None = None,
) -> Completed:
    """Runs a command to completion; never raises for a non-zero exit (callers decide).

    `output`: descriptors to give the command as stdout and stderr instead of capturing them
    (a restored process inherits them); its Completed then has empty output.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output[0] if output else out,
            stderr=output[1] if output else err,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            returncode = await asyncio.wait_for(proc.wait(), time_limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            returncode = -9
            err.write(f"\ntimed out after {time_limit:.0f} s".encode())
        out.seek(0)
        err.seek(0)
        result = Completed(
            argv=tuple(argv),
            returncode=returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            seconds=time.perf_counter() - start,
        )
    log.debug("ran %s", argv[0], extra={"argv": list(argv), "rc": returncode})
    return result


def which(name: str, path: str | None = None) -> Path | None:
    found = shutil.which(name, path=path)
    return Path(found) if found else None


def log_tail(path: Path, lines: int = 15) -> str:
    """What a tool's log file says went wrong, for error messages: its error lines (CRIU
    marks them `Error (file:line)`) when it has any, else its last lines; empty when absent."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    all_lines = text.strip().splitlines()
    errors = [line for line in all_lines if "Error (" in line]
    return "\n".join(errors[:lines] if errors else all_lines[-lines:])


def env_with_path_first(directory: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{directory}{os.pathsep}{env.get('PATH', os.defpath)}"
    return env
