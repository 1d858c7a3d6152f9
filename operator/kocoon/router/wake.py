"""Holding requests for a target that is not Ready, and asking once for it to wake.

The first request for a sleeping target starts one wake request; every further request joins
the same wait. Waiters are released by the routing table (a watch event saying Ready), not
by polling. Queues are bounded per target and in total; a full queue refuses at once (429)
and a wait that outlives its deadline ends in 503, both with Retry-After.

Across router replicas the wake write itself is idempotent (see `kube.py`): each replica asks
at most once per wait, and the cluster keeps a single request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kocoon.router.table import Route, RoutingTable, TargetKey

log = logging.getLogger(__name__)

DEFAULT_WAKE_TIMEOUT_SECONDS = 120.0
DEFAULT_QUEUE_PER_TARGET = 1000
DEFAULT_QUEUE_TOTAL = 10000
DEFAULT_RETRY_AFTER_SECONDS = 5
WAKE_RETRY_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)


def _clock() -> float:
    # The event loop's clock: the same one timeouts wait on, and one tests can fast-forward.
    return asyncio.get_running_loop().time()


class WakeControl(Protocol):
    """The router's way to ask the cluster to wake a target (see `kube.KubeWakeControl`)."""

    async def request_wake(self, key: TargetKey) -> None: ...


class HoldRefused(Exception):
    """A request that cannot be held; carries the HTTP answer's essentials."""

    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(HoldRefused):
    status = 429


class WakeTimedOut(HoldRefused):
    status = 503


class TargetGone(Exception):
    """The target was deleted or failed while requests waited for it."""


@dataclass(frozen=True)
class WakeConfig:
    timeout: float = DEFAULT_WAKE_TIMEOUT_SECONDS
    queue_per_target: int = DEFAULT_QUEUE_PER_TARGET
    queue_total: int = DEFAULT_QUEUE_TOTAL
    retry_after: int = DEFAULT_RETRY_AFTER_SECONDS


@dataclass
class _Pending:
    """Everything waiting for one target."""

    waiters: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    wake_task: asyncio.Task[None] | None = None
    started: float = field(default_factory=_clock)


@dataclass
class WakeCallbacks:
    """Hooks for metrics; all optional."""

    on_wake_requested: Callable[[TargetKey], None] | None = None
    on_held: Callable[[int], None] | None = None  # total held now
    on_released: Callable[[TargetKey, float], None] | None = None  # seconds waited


class Waker:
    def __init__(
        self,
        table: RoutingTable,
        control: WakeControl,
        config: WakeConfig | None = None,
        callbacks: WakeCallbacks | None = None,
    ) -> None:
        self.table = table
        self.control = control
        self.config = config or WakeConfig()
        self.callbacks = callbacks or WakeCallbacks()
        self.pending: dict[TargetKey, _Pending] = {}
        self.held_total = 0
        table.listeners.append(self._on_table_change)

    def hold(self, key: TargetKey) -> Hold:
        """Join the wait for `key`, starting its wake if nobody waits yet.

        Raises QueueFull at once when the target's or the router's queue is full.
        """
        pending = self.pending.get(key)
        if self.held_total >= self.config.queue_total:
            raise QueueFull(
                f"the router holds {self.held_total} requests, its limit; retry later",
                self.config.retry_after,
            )
        if pending is not None and pending.waiters >= self.config.queue_per_target:
            raise QueueFull(
                f"{key} already has {pending.waiters} requests waiting for it to wake; retry later",
                self.config.retry_after,
            )
        if pending is None:
            pending = self.pending[key] = _Pending()
            pending.wake_task = asyncio.create_task(self._request_wake(key, pending))
        pending.waiters += 1
        self.held_total += 1
        if self.callbacks.on_held:
            self.callbacks.on_held(self.held_total)
        return Hold(self, key, pending, _clock() + self.config.timeout)

    def _release(self, hold: Hold) -> None:
        pending = hold.pending
        pending.waiters -= 1
        self.held_total -= 1
        if self.callbacks.on_held:
            self.callbacks.on_held(self.held_total)
        if self.callbacks.on_released:
            self.callbacks.on_released(hold.key, _clock() - hold.started)
        if pending.waiters == 0 and self.pending.get(hold.key) is pending:
            # The next request after this starts a new wait (and a new, idempotent request).
            del self.pending[hold.key]
            if pending.wake_task is not None and not pending.wake_task.done():
                pending.wake_task.cancel()

    async def _request_wake(self, key: TargetKey, pending: _Pending) -> None:
        attempt = 0
        while True:
            try:
                await self.control.request_wake(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = WAKE_RETRY_BACKOFF_SECONDS[
                    min(attempt, len(WAKE_RETRY_BACKOFF_SECONDS) - 1)
                ]
                log.warning(
                    "wake request failed; retrying",
                    extra={"target": str(key), "error": repr(error), "retry_in": delay},
                )
                attempt += 1
                await asyncio.sleep(delay)
                continue
            log.info("wake requested", extra={"target": str(key)})
            if self.callbacks.on_wake_requested:
                self.callbacks.on_wake_requested(key)
            return

    def _on_table_change(self) -> None:
        # Wake every wait; each re-reads its route. Swapping the event (rather than clearing
        # it) lets waiters that have not run yet still see the set one.
        for pending in self.pending.values():
            pending.changed.set()
            pending.changed = asyncio.Event()


class Hold:
    """One held request. Use as a context manager so the slot is always given back."""

    def __init__(self, waker: Waker, key: TargetKey, pending: _Pending, deadline: float) -> None:
        self.waker = waker
        self.key = key
        self.pending = pending
        self.deadline = deadline
        self.started = _clock()
        self._released = False

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.waker._release(self)

    def remaining(self) -> float:
        return max(0.0, self.deadline - _clock())

    async def wait_ready(self, at_most: float | None = None) -> Route | None:
        """The route once it is forwardable; None if `at_most` seconds pass first.

        Raises WakeTimedOut at the hold's deadline and TargetGone if the target disappears
        or fails meanwhile.
        """
        limit = self.remaining() if at_most is None else min(at_most, self.remaining())
        until = _clock() + limit
        while True:
            route = self.waker.table.resolve(self.key)
            if route is None:
                raise TargetGone(f"{self.key} no longer exists")
            if route.unroutable:
                raise TargetGone(f"{self.key} is {route.phase}")
            if route.forwardable:
                return route
            left = until - _clock()
            if left <= 0:
                if self.remaining() <= 0:
                    raise WakeTimedOut(
                        f"{self.key} did not become Ready within "
                        f"{self.waker.config.timeout:g}s; retry later",
                        self.waker.config.retry_after,
                    )
                return None
            event = self.pending.changed
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                continue
