"""The worker's offset bookkeeping without a broker: :class:`OffsetTracker` on its own, and the worker's
consumer edge (:class:`FrameConsumer`) over an in-memory fake of kafka-python's consumer.

The fake keeps, per partition, a log of messages, a fetch position and a committed offset, and lets a
test move partitions in and out of the assignment as a group rebalance would: as in kafka-python 3.0, a
partition kept through a rebalance keeps its position, and a newly assigned one starts at its committed
offset.
"""

from __future__ import annotations

import threading
import time
from collections import namedtuple
from types import SimpleNamespace

import pytest
from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import REGISTRY

from linewatch.detector.stream import telemetry
from linewatch.detector.stream.batching import BatchCollector
from linewatch.detector.stream.consumer import FrameConsumer
from linewatch.detector.stream.heartbeat import send_heartbeats, worker_status
from linewatch.detector.stream.model_shelf import ModelShelf
from linewatch.detector.stream.offsets import OffsetTracker, Snapshot, next_offsets
from linewatch.detector.stream.throughput import Throughput

TOPIC = "t.frames"
P0, P1, P2 = (TOPIC, 0), (TOPIC, 1), (TOPIC, 2)
# kafka-python's ConsumerRecord fields the worker reads (timestamp type 0: CreateTime, the producer's clock)
Record = namedtuple("Record", "offset key value headers timestamp timestamp_type", defaults=(0, 0))


class FakeConsumer:
    """An in-memory consumer-group member: what the worker calls on kafka-python's consumer, nothing more."""

    def __init__(self, partitions: int = 3):
        self.logs: dict[TopicPartition, list[Record]] = {TopicPartition(TOPIC, p): [] for p in range(partitions)}
        self.position: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.commits: list[dict[TopicPartition, int]] = []  # every commit call, in order
        self.refuse_commits = False
        self.calls: list[tuple[str, str]] = []  # (method, thread name) of every call

    def _call(self, name: str) -> None:
        self.calls.append((name, threading.current_thread().name))

    # ---- test controls ----

    def produce(self, partition: int, n: int) -> None:
        log = self.logs[TopicPartition(TOPIC, partition)]
        start = len(log)
        log.extend(Record(start + i, b"cam", b"jpeg", []) for i in range(n))

    def rebalance(self, *partitions: int) -> None:
        """The group's new assignment for this member: kept partitions keep their position, new ones start
        at their committed offset (kafka-python 3.0's SubscriptionState.assign_from_subscribed)."""
        tps = [TopicPartition(TOPIC, p) for p in partitions]
        self.position = {tp: self.position.get(tp, self.committed.get(tp, 0)) for tp in tps}

    # ---- the consumer's API, as the worker uses it ----

    def partitions_for_topic(self, topic: str) -> set[int]:
        self._call("partitions_for_topic")
        return {tp.partition for tp in self.logs}

    def subscribe(self, topics: list[str], listener=None) -> None:
        self._call("subscribe")

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        self._call("poll")
        out, room = {}, max_records or 10**9
        for tp, pos in sorted(self.position.items()):
            records = self.logs[tp][pos : pos + room]
            if records:
                out[tp] = records
                self.position[tp] = pos + len(records)
                room -= len(records)
        return out

    def assignment(self) -> set[TopicPartition]:
        self._call("assignment")
        return set(self.position)

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self._call("commit")
        if self.refuse_commits:
            raise CommitFailedError("the group has rebalanced")
        self.commits.append({tp: om.offset for tp, om in offsets.items()})
        self.committed.update({tp: om.offset for tp, om in offsets.items()})

    def highwater(self, tp: TopicPartition) -> int | None:
        self._call("highwater")
        return len(self.logs[tp])

    def close(self, autocommit: bool = True) -> None:
        self._call("close")


@pytest.fixture(autouse=True)
def _no_lag_gauges():
    telemetry.CONSUMER_LAG.clear()
    yield
    telemetry.CONSUMER_LAG.clear()


def lag_gauge(partition: int) -> float | None:
    return REGISTRY.get_sample_value("linewatch_consumer_lag_frames", {"partition": str(partition)})


def submit(tracker: OffsetTracker, frames) -> int:
    """What the worker does with a closed batch: record its offsets, get its id."""
    return tracker.submit(next_offsets((f.topic, f.partition, f.offset) for f in frames))


# ---- OffsetTracker alone ---------------------------------------------------------------------------------


def test_next_offsets_is_one_past_the_highest_offset_per_partition():
    assert next_offsets([(TOPIC, 0, 7), (TOPIC, 1, 3), (TOPIC, 0, 5), (TOPIC, 0, 9)]) == {P0: 10, P1: 4}
    assert next_offsets([]) == {}


def test_batches_stored_out_of_order_are_committed_as_the_contiguous_prefix_in_submission_order():
    t = OffsetTracker()
    t.assign([P0, P1])
    b0 = t.submit({P0: 10, P1: 5})
    b1 = t.submit({P0: 20})
    b2 = t.submit({P1: 9})
    assert (b0, b1, b2) == (0, 1, 2)
    t.stored(b1)
    t.stored(b2)
    assert t.take_commit() == {}  # b0 is not stored: committing b1 would skip its frames of P0
    assert t.pending == 3
    t.stored(b0)
    assert t.take_commit() == {P0: 20, P1: 9}  # the newest offset per partition
    assert t.pending == 0
    assert t.take_commit() == {}


def test_only_the_stored_prefix_is_taken_and_the_rest_waits():
    t = OffsetTracker()
    t.assign([P0])
    b0, b1, b2 = t.submit({P0: 3}), t.submit({P0: 6}), t.submit({P0: 9})
    t.stored(b0)
    t.stored(b2)
    assert t.take_commit() == {P0: 3}
    assert t.pending == 2
    t.stored(b1)
    assert t.take_commit() == {P0: 9}


def test_a_partition_not_owned_at_commit_time_is_not_committed_and_its_lag_is_forgotten():
    t = OffsetTracker()
    t.assign([P0, P1])
    b0 = t.submit({P0: 4, P1: 8})
    t.stored(b0)
    assert t.take_commit() == {P0: 4, P1: 8}
    assert t.record_lag({P0: 4, P1: 8}, {P0: 10, P1: 8}.get) == {P0: 6, P1: 0}
    b1 = t.submit({P0: 10, P1: 12})
    assert t.assign([P1]) == frozenset({P0})  # rebalance: P0 moved away
    assert dict(t.snapshot.lag) == {P1: 0}
    t.stored(b1)
    assert t.take_commit() == {P1: 12}  # the batch is done; its P0 frames are re-read by their new owner
    assert t.pending == 0


def test_lag_is_not_recorded_for_a_partition_lost_meanwhile_or_without_a_high_water_mark():
    t = OffsetTracker()
    t.assign([P0, P1])
    assert t.record_lag({P0: 5, P1: 5}, {P0: 9}.get) == {P0: 4}
    t.assign([P1])
    assert t.record_lag({P0: 5}, {P0: 9}.get) == {}
    assert dict(t.snapshot.lag) == {}


def test_snapshots_are_replaced_not_changed():
    t = OffsetTracker()
    t.assign([P0, P1])
    t.record_lag({P0: 1}, {P0: 3}.get)
    before = t.snapshot
    t.assign([P1, P2])
    assert before.partitions == {P0, P1} and dict(before.lag) == {P0: 2}
    assert t.snapshot.partitions == {P1, P2} and dict(t.snapshot.lag) == {}
    assert t.snapshot.partition_names() == [f"{TOPIC}/1", f"{TOPIC}/2"]
    with pytest.raises(TypeError):
        before.lag[P0] = 0  # type: ignore[index]


def test_storing_an_unknown_or_committed_batch_is_an_error():
    t = OffsetTracker()
    with pytest.raises(KeyError):
        t.stored(0)
    t.assign([P0])
    b = t.submit({P0: 1})
    t.stored(b)
    t.take_commit()
    with pytest.raises(KeyError):
        t.stored(b)


# ---- FrameConsumer over the fake consumer ---------------------------------------------------------------


def test_commits_after_out_of_order_completion_and_lag_from_high_water_marks():
    fake = FakeConsumer()
    fake.produce(0, 10)
    fake.produce(1, 6)
    fake.rebalance(0, 1)
    tracker = OffsetTracker()
    member = FrameConsumer(fake, tracker)
    first = member.poll(0, 8)  # P0 0..7
    second = member.poll(0, 8)  # P0 8..9, P1 0..5
    assert [(f.partition, f.offset) for f in first] == [(0, i) for i in range(8)]
    b0, b1 = submit(tracker, first), submit(tracker, second)
    tracker.stored(b1)
    assert member.commit_stored() == {}
    assert fake.commits == []  # nothing before b0 is stored
    tracker.stored(b0)
    assert member.commit_stored() == {P0: 10, P1: 6}
    assert fake.committed == {TopicPartition(TOPIC, 0): 10, TopicPartition(TOPIC, 1): 6}
    fake.produce(0, 5)  # the camera goes on: 5 frames not yet committed on P0
    b2 = submit(tracker, member.poll(0, 2))  # P0 10..11
    tracker.stored(b2)
    member.commit_stored()
    assert fake.committed[TopicPartition(TOPIC, 0)] == 12
    assert tracker.snapshot.lag_by_name() == {f"{TOPIC}/0": 3, f"{TOPIC}/1": 0}
    assert (lag_gauge(0), lag_gauge(1)) == (3.0, 0.0)


def test_nothing_is_committed_for_a_revoked_partition_and_its_lag_gauge_goes():
    fake = FakeConsumer()
    fake.produce(0, 4)
    fake.produce(1, 4)
    fake.rebalance(0, 1)
    tracker = OffsetTracker()
    member = FrameConsumer(fake, tracker)
    tracker.stored(submit(tracker, member.poll(0, 2)))  # P0 0..1
    member.commit_stored()
    assert lag_gauge(0) == 2.0
    in_flight = submit(tracker, member.poll(0, 10))  # P0 2..3, P1 0..3
    fake.rebalance(1)  # P0 moves to another worker while the batch is being scored
    assert member.poll(0, 10) == []  # P1 was kept: nothing new on it
    assert tracker.snapshot.partitions == {P1}
    assert lag_gauge(0) is None and tracker.snapshot.lag_by_name() == {}
    tracker.stored(in_flight)
    assert member.commit_stored() == {P1: 4}
    assert fake.commits[-1] == {TopicPartition(TOPIC, 1): 4}
    assert fake.committed[TopicPartition(TOPIC, 0)] == 2  # the new owner re-reads 2..3
    assert (lag_gauge(0), lag_gauge(1)) == (None, 0.0)


def test_a_partition_assigned_again_is_committed_and_measured_again():
    fake = FakeConsumer()
    fake.produce(0, 6)
    fake.rebalance(0)
    tracker = OffsetTracker()
    member = FrameConsumer(fake, tracker)
    tracker.stored(submit(tracker, member.poll(0, 3)))  # 0..2
    member.commit_stored()
    fake.rebalance()  # revoked ...
    member.poll(0, 10)
    assert lag_gauge(0) is None and tracker.snapshot.partitions == frozenset()
    fake.rebalance(0)  # ... and back: reading resumes at the committed offset 3
    again = member.poll(0, 10)
    assert [f.offset for f in again] == [3, 4, 5]
    tracker.stored(submit(tracker, again))
    assert member.commit_stored() == {P0: 6}
    assert tracker.snapshot.lag_by_name() == {f"{TOPIC}/0": 0}
    assert lag_gauge(0) == 0.0


def test_frames_of_a_revoked_partition_are_dropped_from_the_open_batch():
    fake = FakeConsumer()
    fake.produce(0, 3)
    fake.produce(1, 3)
    fake.rebalance(0, 1)
    member = FrameConsumer(fake, OffsetTracker())
    collector: BatchCollector = BatchCollector(max_batch=16, max_wait_ms=1000)
    collector.add(member.poll(0, 16))
    fake.rebalance(1)
    member.observe_assignment()
    assert collector.drop(member.owns) == 3
    assert {(f.partition, f.offset) for f in collector.take()} == {(1, 0), (1, 1), (1, 2)}


def test_a_refused_commit_is_logged_and_the_batches_are_done():
    fake = FakeConsumer()
    fake.produce(0, 2)
    fake.rebalance(0)
    tracker = OffsetTracker()
    member = FrameConsumer(fake, tracker)
    tracker.stored(submit(tracker, member.poll(0, 2)))
    fake.refuse_commits = True
    assert member.commit_stored() == {P0: 2}  # attempted; redelivered frames are deduplicated by the writes
    assert fake.committed == {} and tracker.pending == 0


def test_the_heartbeat_reads_the_snapshot_and_never_calls_the_consumer():
    fake = FakeConsumer()
    fake.produce(0, 4)
    fake.rebalance(0, 2)
    tracker = OffsetTracker()
    member = FrameConsumer(fake, tracker)
    tracker.stored(submit(tracker, member.poll(0, 3)))
    member.commit_stored()
    beats: list[dict] = []
    live = SimpleNamespace(heartbeat=lambda worker_id, status: beats.append(status))
    model = _shelf(SimpleNamespace(version="v7", device="cpu", runtime="onnxruntime"))  # what a heartbeat reads
    stop = threading.Event()
    thread = threading.Thread(target=send_heartbeats, name="heartbeat", args=(
        live, "w1", lambda: worker_status(model, Throughput(), tracker.snapshot, 0.0), stop, 0.01))
    thread.start()
    deadline = time.monotonic() + 5
    while not beats and time.monotonic() < deadline:
        member.poll(0, 1)  # the main thread goes on polling meanwhile
        time.sleep(0.005)
    stop.set()
    thread.join(5)
    assert beats[-1]["partitions"] == [f"{TOPIC}/0", f"{TOPIC}/2"]
    assert beats[-1]["lag"] == {f"{TOPIC}/0": 1}
    assert (beats[-1]["model_version"], beats[-1]["runtime"]) == ("v7", "onnxruntime")
    assert {thread for _, thread in fake.calls} == {threading.main_thread().name}


def test_worker_status_of_an_empty_snapshot():
    model = _shelf(SimpleNamespace(version="v1", device="cuda:0", runtime="torch"))
    status = worker_status(model, Throughput(), Snapshot(), 12.5)
    assert (status["partitions"], status["lag"], status["device"], status["started_at"]) == ([], {}, "cuda:0", 12.5)
    assert (status["registry_version"], status["model_behind"]) == (None, None)
    assert status["products"] == {"default": {"model_version": "v1", "device": "cuda:0", "runtime": "torch",
                                            "registry_version": None, "model_behind": None, "model_load_error": None}}


def _shelf(scorer) -> ModelShelf:
    """A worker's models holding ``scorer`` (what a heartbeat reads of it) as the default product's."""
    shelf = ModelShelf(load=lambda _: scorer, budget_bytes=2**40)
    shelf.install("default", scorer)
    return shelf
