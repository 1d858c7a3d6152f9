"""Least in-flight balancing across a model's replicas.

Each router replica counts the requests it has forwarded and not finished, per backend
address; a request goes to the ready, awake backend with the fewest (ties in turn, so a
quiet model still spreads sequential requests). Sleeping replicas never appear here: the
routing table leaves them out of a route's endpoints. LLM requests vary by orders of
magnitude in length, so the count of open requests follows a replica's real load far better
than taking turns does.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


@dataclass
class Balancer:
    in_flight: dict[str, int] = field(default_factory=dict)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    def pick(self, endpoints: Sequence[str], *, avoid: str | None = None) -> str:
        """The endpoint with the fewest open requests; `avoid` only if it is the only one."""
        if not endpoints:
            raise LookupError("no endpoints to pick from")
        choices = [e for e in endpoints if e != avoid] or list(endpoints)
        least = min(self.in_flight.get(e, 0) for e in choices)
        tied = [e for e in choices if self.in_flight.get(e, 0) == least]
        return tied[next(self._turn) % len(tied)]

    @contextlib.contextmanager
    def using(self, endpoint: str) -> Iterator[str]:
        self.in_flight[endpoint] = self.in_flight.get(endpoint, 0) + 1
        try:
            yield endpoint
        finally:
            left = self.in_flight[endpoint] - 1
            if left:
                self.in_flight[endpoint] = left
            else:
                del self.in_flight[endpoint]
