"""The one reconcile core every controller runs on: watch-fed stores and a worker per object.

- `Store` is an in-memory cache of one kind, fed by kopf `on.event` handlers (an informer's
  store). Controllers read from stores; they never GET an object per reconcile.
- `Reconciler` keeps one worker per object. `trigger(key)` starts it or wakes it; a burst of
  triggers while a reconcile runs causes exactly one more run. Between runs the worker sleeps
  `min(requeue_after, resync)`, or backs off exponentially after an exception. `forget(key)`
  stops it and drops everything it held, so a deleted object leaves no timer or lock behind.

No two reconciles of one object ever run at once: there is only one worker per key, and a
worker started after `forget` waits for the previous one to finish first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kocoon.kube.client import Conflict

log = logging.getLogger(__name__)

DEFAULT_RESYNC = 300.0
DEFAULT_BACKOFF_BASE = 1.0
DEFAULT_BACKOFF_MAX = 300.0
# After a write refused for a moved resourceVersion (`Conflict`, a 409): retry this soon, with
# the newer object the watch brings, and report no error.
CONFLICT_DELAY = 0.2


@dataclass(frozen=True, order=True)
class Key:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Result:
    """What a reconcile asks for: be called again within `requeue_after` seconds; None means
    only on the next event or the resync."""

    requeue_after: float | None = None


def _resource_version(body: Mapping[str, Any]) -> int | None:
    value = (body.get("metadata") or {}).get("resourceVersion")
    return int(value) if isinstance(value, str) and value.isdigit() else None


class Store:
    """One kind's objects as the watch last reported them, by namespace and name.

    `upsert` ignores a body older than the one held (by resourceVersion), so a controller may
    put the answer to its own write in at once, and the older watch event that follows does
    not take it back. managedFields are dropped: nothing reads them and they are most of an
    object's size.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._objects: dict[str, dict[str, dict[str, Any]]] = {}

    def upsert(self, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        namespace, name = metadata.get("namespace") or "", metadata.get("name")
        if not name:
            return
        names = self._objects.setdefault(namespace, {})
        held = names.get(name)
        if held is not None:
            old, new = _resource_version(held), _resource_version(body)
            if old is not None and new is not None and new < old:
                return
        copy = dict(body)
        copy["metadata"] = {k: v for k, v in metadata.items() if k != "managedFields"}
        names[name] = copy

    def remove(self, namespace: str | None, name: str) -> None:
        names = self._objects.get(namespace or "")
        if names is None:
            return
        names.pop(name, None)
        if not names:
            del self._objects[namespace or ""]

    def observe(self, event_type: str, body: Mapping[str, Any]) -> None:
        """Apply one watch event: DELETED removes the object, anything else stores it."""
        if event_type == "DELETED":
            metadata = body.get("metadata") or {}
            self.remove(metadata.get("namespace"), str(metadata.get("name", "")))
        else:
            self.upsert(body)

    def get(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._objects.get(namespace or "", {}).get(name)

    def select(self, namespace: str | None, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """The objects of a namespace whose labels include all of `labels`."""
        found = []
        for body in self._objects.get(namespace or "", {}).values():
            have = (body.get("metadata") or {}).get("labels") or {}
            if all(have.get(k) == v for k, v in labels.items()):
                found.append(body)
        return found

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for names in list(self._objects.values()):
            yield from list(names.values())

    def __len__(self) -> int:
        return sum(len(names) for names in self._objects.values())


ReconcileFn = Callable[[Key], Awaitable[Result]]
ReportErrorFn = Callable[[Key, Exception, int], Awaitable[None]]


class _Worker:
    __slots__ = ("stopped", "task", "wake")

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.stopped = False
        self.task: asyncio.Task[None] | None = None


class Reconciler:
    """A worker per object: reconcile on a trigger, after `requeue_after`, or every `resync`."""

    def __init__(
        self,
        name: str,
        reconcile: ReconcileFn,
        *,
        resync: float = DEFAULT_RESYNC,
        report_error: ReportErrorFn | None = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
    ) -> None:
        if resync <= 0 or backoff_base <= 0 or backoff_max < backoff_base:
            raise ValueError("resync and backoff_base must be > 0, backoff_max ≥ backoff_base")
        self.name = name
        self._reconcile = reconcile
        self.resync = resync
        self._report_error = report_error
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._workers: dict[Key, _Worker] = {}
        # Workers stopped by `forget` whose reconcile has not unwound yet: a new worker for the
        # same key waits for them. Each removes itself when done.
        self._stopping: dict[Key, asyncio.Task[None]] = {}
        self._closed = False

    def __len__(self) -> int:
        """How many objects have a worker."""
        return len(self._workers)

    def __contains__(self, key: object) -> bool:
        return key in self._workers

    def backoff(self, failures: int) -> float:
        """The pause after the `failures`-th consecutive failure: base·2^(n-1), capped."""
        return float(min(self.backoff_max, self.backoff_base * 2 ** max(0, failures - 1)))

    def trigger(self, key: Key) -> None:
        """Reconcile `key` soon: start its worker, or wake it (once, however many triggers)."""
        if self._closed:
            return
        worker = self._workers.get(key)
        if worker is not None:
            worker.wake.set()
            return
        worker = _Worker()
        self._workers[key] = worker
        previous = self._stopping.get(key)
        worker.task = asyncio.get_running_loop().create_task(
            self._run(key, worker, previous), name=f"{self.name}:{key}"
        )

    def forget(self, key: Key) -> None:
        """Stop `key`'s worker and drop its state (the object is gone)."""
        worker = self._workers.pop(key, None)
        if worker is None:
            return
        worker.stopped = True
        task = worker.task
        if task is None or task.done():
            return
        if task is asyncio.current_task():
            return  # called from its own reconcile: the loop ends when that returns
        task.cancel()
        self._stopping[key] = task
        task.add_done_callback(lambda done: self._unstop(key, done))

    def _unstop(self, key: Key, task: asyncio.Task[None]) -> None:
        if self._stopping.get(key) is task:
            del self._stopping[key]

    async def close(self) -> None:
        """Stop every worker and wait for them."""
        self._closed = True
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        tasks += list(self._stopping.values())
        for key in list(self._workers):
            self.forget(key)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._stopping.clear()

    async def _run(self, key: Key, worker: _Worker, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(previous)
        failures = conflicts = 0
        try:
            while not worker.stopped:
                worker.wake.clear()  # a trigger from here on means one more run
                try:
                    result = await self._reconcile(key)
                except Conflict:
                    conflicts += 1
                    pause, wakeable = min(self.backoff_max, CONFLICT_DELAY * conflicts), False
                except Exception as error:
                    failures, conflicts = failures + 1, 0
                    await self._report(key, error, failures)
                    pause, wakeable = self.backoff(failures), False
                else:
                    failures = conflicts = 0
                    pause, wakeable = self.pause(result), True
                if worker.stopped:
                    return
                await self._sleep(worker, pause, wakeable)
        finally:
            if self._workers.get(key) is worker:
                del self._workers[key]

    def pause(self, result: Result) -> float:
        """Seconds until the next run after a successful one: min(requeue_after, resync)."""
        if result.requeue_after is None:
            return self.resync
        return max(0.0, min(float(result.requeue_after), self.resync))

    async def _report(self, key: Key, error: Exception, failures: int) -> None:
        log.warning(
            "%s %s: reconcile failed (%d in a row): %s",
            self.name,
            key,
            failures,
            error,
            exc_info=failures == 1,
            extra={"object": str(key), "failures": failures},
        )
        if self._report_error is None:
            return
        try:
            await self._report_error(key, error, failures)
        except asyncio.CancelledError:
            raise
        except Exception as report_failure:
            log.warning("%s %s: could not report the error: %s", self.name, key, report_failure)

    @staticmethod
    async def _sleep(worker: _Worker, pause: float, wakeable: bool) -> None:
        """Sleep `pause` seconds; a trigger cuts it short unless the worker is backing off (a
        failing object's own status write must not undo its backoff)."""
        if not wakeable:
            await asyncio.sleep(pause)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.wake.wait(), timeout=pause)
