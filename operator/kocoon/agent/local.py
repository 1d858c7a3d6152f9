"""`kocoon agent` as a process on this machine (the local cluster, tests, benchmarks): its
credentials and its command line, written once for all of them."""

from __future__ import annotations

import secrets
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from kocoon.agent import tls


@dataclass(frozen=True)
class Credentials:
    """A self-signed serving certificate for loopback and the operator's bearer token."""

    cert: Path
    key: Path
    token_file: Path
    token: str

    def client_context(self) -> ssl.SSLContext:
        """What a client trusts to reach this agent."""
        return ssl.create_default_context(cafile=str(self.cert))


def credentials(directory: Path) -> Credentials:
    """Create (or reuse) the credentials kept in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, token_file = directory / "tls.crt", directory / "tls.key", directory / "token"
    if not (cert.exists() and key.exists()):
        tls.write_self_signed(cert, key, ["localhost", "127.0.0.1"])
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(32) + "\n")
        token_file.chmod(0o600)
    return Credentials(cert, key, token_file, token_file.read_text().strip())


def command(
    creds: Credentials,
    port: int,
    state_dir: Path,
    *,
    node_name: str = "local",
    scratch_dir: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    """The argv of an agent serving on 127.0.0.1:`port`."""
    argv = [
        sys.executable, "-m", "kocoon.cli", "agent",
        "--host", "127.0.0.1", "--port", str(port),
        "--tls-cert", str(creds.cert), "--tls-key", str(creds.key),
        "--token-file", str(creds.token_file),
        "--state-dir", str(state_dir), "--node-name", node_name,
    ]  # fmt: skip
    if scratch_dir is not None:
        argv += ["--scratch-dir", str(scratch_dir)]
    return [*argv, *extra_args]
