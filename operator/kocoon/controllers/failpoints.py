"""Failpoints: named places where the operator can be made to die, to prove restarts converge.

`KOCOON_FAILPOINTS=after:DeletePod,before-status:Hibernated` makes the process exit at once
(as a kill would) when it reaches one of those points. Unset, they cost one set lookup.
"""

from __future__ import annotations

import logging
import os

ENV = "KOCOON_FAILPOINTS"
EXIT_CODE = 137  # what a SIGKILL looks like to a supervisor

log = logging.getLogger(__name__)
_armed = frozenset(p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip())


def hit(point: str) -> None:
    if point in _armed:
        log.warning("failpoint %s reached: exiting", point, extra={"failpoint": point})
        logging.shutdown()
        os._exit(EXIT_CODE)
