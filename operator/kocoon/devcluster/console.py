"""What `make dev` prints and waits with: steps a person can follow, waits that time out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def wait(what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
    """Poll `probe` until it returns something true; that value, or TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(f"timed out waiting for {what}")
