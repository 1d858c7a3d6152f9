"""The activity rate limit and the wake holds, without sockets."""

from __future__ import annotations

import asyncio

import pytest

from kocoon.router.activity import ActivityPublisher, ActivitySnapshot, ActivityTracker
from kocoon.router.table import BackendView, RoutingTable, TargetKey, TargetKind
from kocoon.router.wake import QueueFull, TargetGone, WakeConfig, Waker, WakeTimedOut
from tests.router.routerkit import LocalControl

pytestmark = pytest.mark.unit

A = TargetKey(TargetKind.SANDBOX, "ns", "a")
B = TargetKey(TargetKind.SANDBOX, "ns", "b")


def test_one_renewal_per_interval_whatever_the_traffic() -> None:
    tracker = ActivityTracker(interval=5.0, wall_clock=lambda: 1000.0)
    writes: list[tuple[float, TargetKey]] = []
    for tick in range(0, 200):  # 20 s of traffic, a request every 0.1 s on A
        now = tick / 10
        tracker.begin(A)
        tracker.end(A)
        writes += [(now, key) for key in tracker.due(now)]
    assert [t for t, _ in writes] == [0.0, 5.0, 10.0, 15.0]


def test_in_flight_keeps_renewing_and_quiet_targets_stop() -> None:
    tracker = ActivityTracker(interval=5.0, wall_clock=lambda: 1.0)
    tracker.begin(A)  # a long stream
    tracker.begin(B)
    tracker.end(B)  # a short request
    assert set(tracker.due(0.0)) == {A, B}
    assert tracker.due(3.0) == []
    assert tracker.due(5.0) == [A]  # still in flight: renewed; B quiet: not
    tracker.end(A)
    assert tracker.due(10.0) == [A]  # the renewal at 5.0 counted it in flight: now 0 is written
    assert tracker.snapshot(A) == ActivitySnapshot(0, 1.0)
    assert tracker.due(15.0) == []  # quiet since


def test_activity_after_a_quiet_spell_is_written_at_once() -> None:
    tracker = ActivityTracker(interval=5.0)
    tracker.begin(A)
    tracker.end(A)
    assert tracker.due(0.0) == [A]
    assert tracker.due(100.0) == []
    tracker.begin(A)
    assert tracker.due(100.5) == [A]


async def test_publisher_reports_failures_and_keeps_going() -> None:
    class Flaky:
        calls = 0

        async def renew(self, key: TargetKey, snapshot: ActivitySnapshot) -> None:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("api down")

    tracker = ActivityTracker(interval=1.0)
    written: list[TargetKey] = []
    now = [0.0]
    publisher = ActivityPublisher(tracker, Flaky(), clock=lambda: now[0], on_write=written.append)
    tracker.begin(A)
    assert await publisher.publish_due() == 1
    assert written == []
    now[0] = 1.0
    assert await publisher.publish_due() == 1
    assert written == [A]


def _sleeping(table: RoutingTable) -> LocalControl:
    table.upsert_backend(A, BackendView("Hibernated", False, ()))
    control = LocalControl(table, delay=0.05)
    control.bring_up[A] = lambda: table.upsert_backend(A, BackendView("Running", True, ("h:1",)))
    return control


async def test_many_holds_one_wake() -> None:
    table = RoutingTable()
    control = _sleeping(table)
    waker = Waker(table, control, WakeConfig(timeout=2))

    async def wait() -> str:
        with waker.hold(A) as hold:
            route = await hold.wait_ready()
            assert route is not None
            return route.endpoints[0]

    assert await asyncio.gather(*(wait() for _ in range(200))) == ["h:1"] * 200
    assert control.requests == [A]
    assert waker.held_total == 0
    assert waker.pending == {}


async def test_queue_limits_per_target_and_in_total() -> None:
    table = RoutingTable()
    table.upsert_backend(B, BackendView("Hibernated", False, ()))
    waker = Waker(table, _sleeping(table), WakeConfig(queue_per_target=2, queue_total=3))
    holds = [waker.hold(A), waker.hold(A)]
    with pytest.raises(QueueFull, match="already has 2 requests"):
        waker.hold(A)
    holds.append(waker.hold(B))
    with pytest.raises(QueueFull, match="its limit") as full:
        waker.hold(B)
    assert full.value.status == 429
    for hold in holds:
        hold.release()
    assert waker.held_total == 0


async def test_timeout_and_target_gone() -> None:
    table = RoutingTable()
    table.upsert_backend(A, BackendView("Hibernated", False, ()))
    waker = Waker(table, LocalControl(table), WakeConfig(timeout=0.1, retry_after=9))
    with waker.hold(A) as hold:
        assert await hold.wait_ready(0.02) is None  # a heartbeat slice, not the deadline
        with pytest.raises(WakeTimedOut) as timed_out:
            await hold.wait_ready()
    assert (timed_out.value.status, timed_out.value.retry_after) == (503, 9)
    with waker.hold(A) as hold:
        asyncio.get_running_loop().call_later(0.02, table.delete_backend, A)
        with pytest.raises(TargetGone):
            await hold.wait_ready()


async def test_failed_wake_requests_are_retried() -> None:
    table = RoutingTable()
    table.upsert_backend(A, BackendView("Hibernated", False, ()))

    class FailsOnce:
        calls = 0

        async def request_wake(self, key: TargetKey) -> None:
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("api unreachable")
            table.upsert_backend(A, BackendView("Running", True, ("h:1",)))

    control = FailsOnce()
    waker = Waker(table, control, WakeConfig(timeout=3))
    with waker.hold(A) as hold:
        assert await hold.wait_ready() is not None
    assert control.calls == 2


@pytest.mark.looptime
async def test_a_held_request_times_out_exactly_at_the_wake_timeout(looptime: float) -> None:
    # Virtual time: 30 s of waiting take no real time, and the deadline is exact.
    table = RoutingTable()
    table.upsert_backend(A, BackendView("Hibernated", False, ()))
    waker = Waker(table, LocalControl(table, delay=3600), WakeConfig(timeout=30, retry_after=5))
    start = asyncio.get_running_loop().time()
    with waker.hold(A) as hold:
        assert await hold.wait_ready(10) is None
        assert asyncio.get_running_loop().time() - start == pytest.approx(10)
        with pytest.raises(WakeTimedOut):
            await hold.wait_ready()
    assert asyncio.get_running_loop().time() - start == pytest.approx(30)
