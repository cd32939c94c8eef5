"""engine.sip.timerheap: the one heap of deadlines the transactions and the calls use."""

from __future__ import annotations

from engine.sip.timerheap import TimerHeap


def test_due_timers_come_out_earliest_first_then_in_arming_order() -> None:
    heap: TimerHeap[str] = TimerHeap()
    heap.arm("b", "x", 2.0)
    heap.arm("a", "x", 1.0)
    heap.arm("c", "y", 2.0)
    assert heap.next_wakeup() == 1.0 and len(heap) == 3
    assert heap.pop(0.5) is None
    assert [heap.pop(5.0), heap.pop(5.0), heap.pop(5.0), heap.pop(5.0)] == [
        ("a", "x"), ("b", "x"), ("c", "y"), None]
    assert len(heap) == 0 and heap.next_wakeup() is None


def test_a_cancelled_or_rearmed_timer_is_never_the_head() -> None:
    heap: TimerHeap[str] = TimerHeap()
    heap.arm("call", "no_answer", 10.0)
    heap.arm("call", "ok", 20.0)
    heap.cancel("call", "no_answer")
    assert heap.next_wakeup() == 20.0  # the stale 10.0 is not reported
    heap.arm("call", "ok", 30.0)  # re-armed later
    assert heap.next_wakeup() == 30.0 and heap.deadline("call", "ok") == 30.0
    assert heap.pop(25.0) is None
    heap.arm("other", "ok", 1.0)
    heap.cancel_all("call")
    assert heap.pop(100.0) == ("other", "ok") and heap.pop(100.0) is None
    assert not heap.armed("call", "ok") and len(heap) == 0


def test_stale_entries_are_compacted_away() -> None:
    heap: TimerHeap[int] = TimerHeap()
    for i in range(10_000):
        heap.arm(i % 10, "t", float(i))  # each re-arm leaves a stale entry behind
    assert len(heap) == 10
    assert heap.entries < 300
    assert heap.next_wakeup() == 9990.0
