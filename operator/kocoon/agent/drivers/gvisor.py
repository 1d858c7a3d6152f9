"""gVisor (`runsc checkpoint` / `runsc restore`). Detected, not driven."""

from __future__ import annotations

from kocoon.agent.drivers.base import DRIVER_GVISOR, Availability, Unsupported
from kocoon.agent.drivers.refusing import Refusing, detect

RUNSC_BINARY = "runsc"


class GvisorDriver(Refusing):
    """gVisor: `runsc checkpoint` / `runsc restore`."""

    @property
    def name(self) -> str:
        return DRIVER_GVISOR

    async def probe(self) -> Availability:
        detected = detect((RUNSC_BINARY,))
        if detected.missing:
            return Unsupported(f"missing {RUNSC_BINARY} (gVisor is not installed on this node)")
        return Unsupported(
            f"found {', '.join(detected.found)}, but this agent does not drive runsc checkpoint yet"
        )
