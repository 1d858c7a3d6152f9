"""Prerequisites of the CRIU tests, checked once; tests skip with the reason when one is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kocoon.agent.criu import find_criu


@pytest.fixture(scope="session")
def criu_binary() -> Path:
    if os.geteuid() != 0:
        pytest.skip("CRIU tests need root")
    criu = find_criu()
    if criu is None:
        pytest.skip("no CRIU: run setup/criu.sh (or set KOCOON_CRIU)")
    check = subprocess.run([str(criu), "check"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        pytest.skip(f"`{criu} check` fails on this kernel: {check.stderr.strip()[-300:]}")
    return criu


@pytest.fixture(scope="session")
def runc_binary(criu_binary: Path) -> Path:
    runc = shutil.which("runc")
    if runc is None:
        pytest.skip("no runc: run setup/criu.sh (installs runc and iptables)")
    if shutil.which("iptables-restore") is None:
        pytest.skip("no iptables-restore: runc's checkpoint network lock needs it (setup/criu.sh)")
    return Path(runc)
