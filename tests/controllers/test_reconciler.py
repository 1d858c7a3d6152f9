"""The reconcile core: coalescing, requeue, resync, backoff, forget and close.

Virtual time (looptime): minutes of sleeping take no real time and moments are exact, so the
tests say when each run happens, not merely that it happens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from kocoon.controllers.reconciler import Key, Reconciler, Result, Store
from kocoon.kube.client import Conflict

pytestmark = [pytest.mark.unit, pytest.mark.looptime]

A = Key("ns", "a")
B = Key("ns", "b")


def now() -> float:
    return asyncio.get_running_loop().time()


class Recorder:
    """A reconcile that records when it ran, and answers what the test tells it to."""

    def __init__(self, answer: Callable[[int], Result | Exception] = lambda _: Result()) -> None:
        self.runs: list[float] = []
        self.answer = answer
        self.hold: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.running = 0
        self.max_running = 0

    async def __call__(self, key: Key) -> Result:
        self.runs.append(now())
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            if self.hold is not None:
                await self.hold.wait()
            answer = self.answer(len(self.runs))
        finally:
            self.running -= 1
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_a_burst_of_triggers_during_a_run_causes_exactly_one_more_run() -> None:
    recorder = Recorder()
    recorder.hold = asyncio.Event()
    reconciler = Reconciler("t", recorder, resync=1000)
    reconciler.trigger(A)
    await recorder.started.wait()
    for _ in range(50):
        reconciler.trigger(A)
    recorder.hold.set()
    await asyncio.sleep(10)
    assert len(recorder.runs) == 2
    assert recorder.max_running == 1
    await reconciler.close()


async def test_triggers_while_idle_wake_the_worker_at_once() -> None:
    recorder = Recorder()
    reconciler = Reconciler("t", recorder, resync=1000)
    reconciler.trigger(A)
    await asyncio.sleep(5)
    reconciler.trigger(A)
    reconciler.trigger(A)
    await asyncio.sleep(1)
    assert recorder.runs == [pytest.approx(0, abs=0.01), pytest.approx(5, abs=0.01)]
    await reconciler.close()


async def test_requeue_after_is_honoured_within_a_second() -> None:
    recorder = Recorder(lambda n: Result(requeue_after=7.5) if n == 1 else Result())
    reconciler = Reconciler("t", recorder, resync=1000)
    reconciler.trigger(A)
    await asyncio.sleep(20)
    assert len(recorder.runs) == 2
    assert recorder.runs[1] - recorder.runs[0] == pytest.approx(7.5, abs=1.0)
    await reconciler.close()


async def test_resync_when_there_is_no_deadline_and_requeue_is_capped_by_it() -> None:
    recorder = Recorder(lambda n: Result(requeue_after=10_000) if n == 1 else Result())
    reconciler = Reconciler("t", recorder, resync=60)
    reconciler.trigger(A)
    await asyncio.sleep(185)
    assert recorder.runs == [pytest.approx(t, abs=0.01) for t in (0, 60, 120, 180)]
    await reconciler.close()


async def test_errors_back_off_exponentially_per_object_and_reset_on_success() -> None:
    reports: list[tuple[Key, str, int]] = []

    async def report(key: Key, error: Exception, failures: int) -> None:
        reports.append((key, str(error), failures))

    recorder = Recorder(lambda n: RuntimeError(f"boom {n}") if n <= 4 else Result())
    healthy = Recorder()
    reconciler = Reconciler(
        "t", recorder, resync=1000, report_error=report, backoff_base=2, backoff_max=10
    )
    other = Reconciler("u", healthy, resync=1000)
    reconciler.trigger(A)
    other.trigger(B)
    # Triggers during the backoff do not cut it short (an error's own status write is one).
    await asyncio.sleep(1)
    reconciler.trigger(A)
    await asyncio.sleep(40)
    gaps = [round(b - a, 2) for a, b in zip(recorder.runs, recorder.runs[1:], strict=False)]
    assert gaps == [2, 4, 8, 10]  # 2·2^(n-1), capped at 10; the 5th run succeeds
    assert [f for _, _, f in reports] == [1, 2, 3, 4]
    assert reports[0] == (A, "boom 1", 1)
    assert len(healthy.runs) == 1  # another object does not share the backoff
    # After the success the count starts again from one.
    recorder.answer = lambda n: RuntimeError("again")
    reconciler.trigger(A)
    await asyncio.sleep(0.1)
    assert reports[-1] == (A, "again", 1)
    await reconciler.close()
    await other.close()


async def test_a_conflict_retries_soon_without_reporting_an_error() -> None:
    reports: list[int] = []

    async def report(key: Key, error: Exception, failures: int) -> None:
        reports.append(failures)

    recorder = Recorder(lambda n: Conflict(409, "Conflict", {}) if n == 1 else Result())
    reconciler = Reconciler("t", recorder, resync=1000, report_error=report)
    reconciler.trigger(A)
    await asyncio.sleep(5)
    assert len(recorder.runs) == 2
    assert recorder.runs[1] - recorder.runs[0] < 1
    assert reports == []
    await reconciler.close()


async def test_a_failing_error_report_does_not_stop_the_worker() -> None:
    async def report(key: Key, error: Exception, failures: int) -> None:
        raise RuntimeError("cannot write status either")

    recorder = Recorder(lambda n: RuntimeError("boom") if n == 1 else Result())
    reconciler = Reconciler("t", recorder, resync=1000, report_error=report, backoff_base=1)
    reconciler.trigger(A)
    await asyncio.sleep(3)
    assert len(recorder.runs) == 2
    await reconciler.close()


async def test_forget_stops_the_worker_and_leaves_nothing_behind() -> None:
    recorder = Recorder(lambda n: Result(requeue_after=1))
    reconciler = Reconciler("t", recorder, resync=1000)
    reconciler.trigger(A)
    reconciler.trigger(B)
    await asyncio.sleep(0.5)
    assert A in reconciler
    assert len(reconciler) == 2
    reconciler.forget(A)
    assert A not in reconciler
    runs = len(recorder.runs)
    await asyncio.sleep(10)
    # Only B kept running (once a second); A never ran again.
    assert len(recorder.runs) - runs == 10
    reconciler.forget(B)
    await asyncio.sleep(0.1)
    assert len(reconciler) == 0
    assert reconciler._stopping == {}
    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("t:")]
    assert tasks == []
    reconciler.forget(B)  # twice is fine
    await reconciler.close()


async def test_forget_during_a_run_never_lets_two_runs_overlap() -> None:
    recorder = Recorder()
    recorder.hold = asyncio.Event()
    reconciler = Reconciler("t", recorder, resync=1000)
    reconciler.trigger(A)
    await recorder.started.wait()
    reconciler.forget(A)
    reconciler.trigger(A)  # recreated with the same name at once
    recorder.hold.set()
    await asyncio.sleep(1)
    assert recorder.max_running == 1
    assert len(recorder.runs) == 2
    assert len(reconciler) == 1
    await reconciler.close()


async def test_forget_from_inside_its_own_reconcile_ends_the_worker() -> None:
    reconciler: Reconciler

    async def reconcile(key: Key) -> Result:
        reconciler.forget(key)
        return Result(requeue_after=1)

    reconciler = Reconciler("t", reconcile, resync=1000)
    reconciler.trigger(A)
    await asyncio.sleep(0.1)
    assert len(reconciler) == 0
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("t:")] == []


async def test_close_stops_every_worker_and_ignores_later_triggers() -> None:
    recorder = Recorder(lambda n: Result(requeue_after=1))
    reconciler = Reconciler("t", recorder, resync=1000)
    for i in range(20):
        reconciler.trigger(Key("ns", f"o{i}"))
    await asyncio.sleep(0.5)
    await reconciler.close()
    assert len(reconciler) == 0
    runs = len(recorder.runs)
    reconciler.trigger(A)
    await asyncio.sleep(5)
    assert len(recorder.runs) == runs == 20
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("t:")] == []


def test_backoff_doubles_and_caps() -> None:
    reconciler = Reconciler("t", Recorder(), backoff_base=0.5, backoff_max=30)
    assert [reconciler.backoff(n) for n in (1, 2, 3, 4, 7, 20)] == [0.5, 1, 2, 4, 30, 30]
    with pytest.raises(ValueError, match="resync"):
        Reconciler("t", Recorder(), resync=0)


def body(name: str, rv: str, labels: dict[str, str] | None = None, ns: str = "ns") -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "resourceVersion": rv,
            "labels": labels or {},
            "managedFields": [{"manager": "x"}],
        },
        "spec": {"rv": rv},
    }


def test_store_get_select_remove_and_stale_updates() -> None:
    store = Store("Pod")
    store.upsert(body("p1", "5", {"app": "x", "tier": "a"}))
    store.upsert(body("p2", "6", {"app": "x"}))
    store.upsert(body("p3", "7", {"app": "x"}, ns="other"))
    got = store.get("ns", "p1")
    assert got is not None
    assert got["spec"] == {"rv": "5"}
    assert "managedFields" not in got["metadata"]
    assert sorted(b["metadata"]["name"] for b in store.select("ns", {"app": "x"})) == ["p1", "p2"]
    assert [b["metadata"]["name"] for b in store.select("ns", {"tier": "a"})] == ["p1"]
    assert store.select("nowhere", {}) == []
    # An older version (a watch event behind the controller's own write) does not win.
    store.upsert(body("p1", "9"))
    store.upsert(body("p1", "8"))
    assert store.get("ns", "p1")["spec"] == {"rv": "9"}  # type: ignore[index]
    assert len(store) == 3
    store.remove("ns", "p1")
    store.remove("ns", "p2")
    store.remove("ns", "p2")
    assert store.get("ns", "p1") is None
    assert len(store) == 1
    assert store._objects.keys() == {"other"}  # an emptied namespace leaves no entry
