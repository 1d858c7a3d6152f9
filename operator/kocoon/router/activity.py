"""Activity per target, published as rate-limited Lease renewals.

The data path only bumps counters (`begin`/`end`); a background publisher turns them into at
most one write per target per `interval`, whatever the traffic: a thousand requests in a
second become one renewal. While requests are in flight (a long SSE stream, a WebSocket) the
target keeps being renewed every interval, so "renewTime older than the idle timeout" means
idle, across any number of router replicas.

Requests held for a model that is waking (`queue`/`unqueue`) are counted apart from those in
flight: the model autoscaler sizes replicas for both, and at zero only the queue shows demand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kocoon.router.table import TargetKey

DEFAULT_INTERVAL_SECONDS = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActivitySnapshot:
    in_flight: int
    last_request_at: float  # wall-clock seconds since the epoch
    queued: int = 0  # requests held while the target wakes (models only)


class ActivitySink(Protocol):
    """Where renewals go: the Lease writer in `kube.py`, or a test's recorder."""

    async def renew(self, key: TargetKey, snapshot: ActivitySnapshot) -> None: ...


@dataclass
class _TargetActivity:
    in_flight: int = 0
    queued: int = 0
    last_request_at: float = 0.0
    dirty: bool = False  # a request began or ended since the last renewal was planned
    last_write: float | None = None  # monotonic time of the last planned renewal


@dataclass
class ActivityTracker:
    """In-flight count and last request per target; the pure rate-limit decision."""

    interval: float = DEFAULT_INTERVAL_SECONDS
    wall_clock: Callable[[], float] = time.time
    targets: dict[TargetKey, _TargetActivity] = field(default_factory=dict)

    def begin(self, key: TargetKey) -> None:
        activity = self.targets.get(key)
        if activity is None:
            activity = self.targets[key] = _TargetActivity()
        activity.in_flight += 1
        activity.last_request_at = self.wall_clock()
        activity.dirty = True

    def end(self, key: TargetKey) -> None:
        activity = self.targets[key]
        activity.in_flight -= 1
        activity.last_request_at = self.wall_clock()
        # The last renewal may have counted this request in flight: the lower count must be
        # written too, or the target would look busy (never idle) from then on.
        activity.dirty = True

    def queue(self, key: TargetKey) -> None:
        """A request is held for `key`; it counts as demand and as a request."""
        activity = self.targets.get(key)
        if activity is None:
            activity = self.targets[key] = _TargetActivity()
        activity.queued += 1
        activity.last_request_at = self.wall_clock()
        activity.dirty = True

    def unqueue(self, key: TargetKey) -> None:
        activity = self.targets[key]
        activity.queued -= 1
        activity.dirty = True

    def snapshot(self, key: TargetKey) -> ActivitySnapshot:
        activity = self.targets.get(key, _TargetActivity())
        return ActivitySnapshot(activity.in_flight, activity.last_request_at, activity.queued)

    def due(self, now: float) -> list[TargetKey]:
        """Targets to renew at monotonic time `now`; marks them as written.

        A target is due when it saw activity since its last renewal (or still has requests in
        flight) and its last renewal is at least `interval` old.
        """
        due: list[TargetKey] = []
        for key, activity in self.targets.items():
            active = activity.dirty or activity.in_flight > 0 or activity.queued > 0
            rested = activity.last_write is None or now - activity.last_write >= self.interval
            if active and rested:
                activity.dirty = False
                activity.last_write = now
                due.append(key)
        self._forget_quiet(now)
        return due

    def _forget_quiet(self, now: float) -> None:
        # Keep memory bounded by the number of recently active targets.
        quiet = [
            key
            for key, a in self.targets.items()
            if not a.dirty
            and a.in_flight == 0
            and a.queued == 0
            and a.last_write is not None
            and now - a.last_write >= 2 * self.interval
        ]
        for key in quiet:
            del self.targets[key]


@dataclass
class ActivityPublisher:
    """Runs the tracker's rate-limited renewals against a sink until cancelled."""

    tracker: ActivityTracker
    sink: ActivitySink
    clock: Callable[[], float] = time.monotonic
    on_write: Callable[[TargetKey], None] | None = None

    async def publish_due(self) -> int:
        keys = self.tracker.due(self.clock())
        snapshots = [(key, self.tracker.snapshot(key)) for key in keys]
        results = await asyncio.gather(
            *(self.sink.renew(key, snap) for key, snap in snapshots), return_exceptions=True
        )
        for (key, _), result in zip(snapshots, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("activity renewal failed", extra={"target": str(key), "error": result})
            elif self.on_write is not None:
                self.on_write(key)
        return len(keys)

    async def run(self) -> None:
        # Ticking a few times per interval bounds how late a renewal can be without
        # waking the loop on every request.
        tick = max(0.05, min(1.0, self.tracker.interval / 5))
        while True:
            await self.publish_due()
            await asyncio.sleep(tick)
