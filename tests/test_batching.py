"""Micro-batching: when a batch closes, and how long the consumer may wait for more frames."""

from __future__ import annotations

from linewatch.detector.stream.batching import BatchCollector


class Clock:
    def __init__(self) -> None:
        self.now = 64.0  # steps below are exact binary fractions

    def __call__(self) -> float:
        return self.now


def test_a_batch_closes_when_full_or_when_its_first_frame_waited_max_wait():
    clock = Clock()
    collector: BatchCollector[int] = BatchCollector(max_batch=4, max_wait_ms=500, clock=clock)
    assert not collector.ready() and collector.wait_ms() == 200  # empty: the idle poll timeout
    collector.add([1, 2])
    clock.now += 0.25
    assert not collector.ready()
    assert collector.room == 2 and collector.wait_ms() == 250
    clock.now += 0.25
    assert collector.ready() and collector.wait_ms() == 0
    assert collector.take() == [1, 2] and collector.room == 4
    collector.add([3, 4, 5, 6])
    assert collector.ready()  # full, no waiting


def test_idle_later_stages_take_the_open_batch_at_once():
    clock = Clock()
    collector: BatchCollector[int] = BatchCollector(max_batch=16, max_wait_ms=500, clock=clock)
    assert not collector.ready(idle=True)  # nothing to take
    collector.add([7])
    assert collector.ready(idle=True)
    assert not collector.ready(idle=False)  # busy later stages: keep collecting until max_wait
    clock.now += 0.5
    assert collector.ready(idle=False)


def test_take_keeps_the_newest_frames_with_their_own_wait_and_drop_forgets_revoked_ones():
    clock = Clock()
    collector: BatchCollector[int] = BatchCollector(max_batch=8, max_wait_ms=500, clock=clock)
    collector.add(range(6))
    clock.now += 0.125
    assert collector.take(4) == [0, 1, 2, 3]
    assert collector.items == [4, 5] and collector.wait_ms() == 500  # the rest start a new wait
    assert collector.drop(lambda i: i % 2 == 0) == 1
    assert collector.items == [4]
    assert collector.drop(lambda i: False) == 1 and collector.wait_ms() == 200
