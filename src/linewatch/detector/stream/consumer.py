"""The worker's consumer-group member: the one place that talks to kafka-python's consumer.

kafka-python's consumer is not thread-safe, so a :class:`FrameConsumer` is used from the worker's main
thread only. It turns polled records into :class:`.batches.RawFrame`, tells the :class:`.offsets.OffsetTracker`
which partitions are owned after every poll and before every commit, commits what the tracker allows, and
keeps the lag gauges of owned partitions only. Other threads learn the assignment and lag from the
tracker's snapshot, never from the consumer.

Membership while busy: kafka-python (3.0) heartbeats from its own IO thread, but a member that does not call
``poll`` for ``max_poll_interval_ms`` is made to leave the group, and every member's in-flight frames are
then re-read by someone. So while the worker's pipeline is full, :meth:`FrameConsumer.hold` pauses every
owned partition and polls anyway: the member stays in the group and takes part in rebalances, and nothing
more is fetched. :meth:`FrameConsumer.release` resumes fetching.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from . import telemetry
from .batches import RawFrame
from .offsets import OffsetTracker, Partition

# Kafka's record timestamp type 1: the broker stamped the record when it appended it (its clock, not the camera's).
LOG_APPEND_TIME = 1

log = logging.getLogger(__name__)


class FrameConsumer:
    """A consumer-group member on the frames topic, bookkept by an :class:`OffsetTracker`.

    Args:
        consumer: a subscribed-to-be ``KafkaConsumer`` with auto-commit off (or anything with its
            ``poll``, ``assignment``, ``commit``, ``highwater``, ``partitions_for_topic``, ``subscribe``
            and ``close``; tests pass an in-memory fake).
        offsets: the tracker this member keeps up to date.
        collect_stored: records in ``offsets`` the batches stored since it was last called (the worker's
            pipeline hands them over); called by the rebalance listener before partitions are given up.

    Why a lock: kafka-python runs rebalance listeners on its IO thread, mostly while the main thread waits in
    ``poll``. The main thread holds ``_main`` at all times except inside ``poll``, so the listener may use
    the tracker (to commit what is stored before the partitions go) exactly when the main thread cannot;
    a listener that runs at any other moment (a join finishing after its poll returned) does not wait for
    it, and those frames are redelivered to the partition's new owner instead, whose writes skip them.
    """

    def __init__(self, consumer: Any, offsets: OffsetTracker, collect_stored: Callable[[], None] = lambda: None):
        self.consumer = consumer
        self.offsets = offsets
        self.collect_stored = collect_stored
        self.holding = False  # partitions paused by hold(), until release()
        self._closing = False
        self._unsent: dict[Partition, int] = {}  # offsets of a commit that failed, to send again
        self._failed_at = 0.0
        self._main = threading.Lock()
        self._main.acquire()

    def join(self, topic: str, wait_s: float = 60.0) -> None:
        """Subscribe to ``topic`` once its partitions are known (at most ``wait_s`` later).

        Why wait: a member that joins before the topic's metadata arrived is assigned nothing and has to
        rebalance the group again.
        """
        deadline = time.monotonic() + wait_s
        while not self.consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.consumer.subscribe([topic], listener=_Rebalance(self._commit_before_revoke))

    def poll(self, timeout_ms: int, max_records: int) -> list[RawFrame]:
        """Fetch up to ``max_records`` frames (rebalances happen in here), then record the assignment.

        A poll that fails (the broker away) returns no frames instead of raising: the worker keeps its batches
        in flight and polls again, and kafka-python reconnects and rejoins the group when the broker is back.
        """
        if self.holding:
            self.release()
        return self._poll(timeout_ms, max_records)

    def hold(self, timeout_ms: int) -> None:
        """Stay in the group without fetching: pause every owned partition and poll for ``timeout_ms``.

        Call it instead of :meth:`poll` while the pipeline can take no more frames, at least every few
        seconds (well within ``max_poll_interval_ms``). A partition assigned during this poll is not paused
        yet and may return records: its position is moved back to the first of them, so they are fetched
        again after :meth:`release` and none is skipped.
        """
        self._pause_owned()
        self.holding = True
        frames = self._poll(timeout_ms, 1)
        first: dict[tuple[str, int], int] = {}
        for f in frames:
            first[(f.topic, f.partition)] = min(f.offset, first.get((f.topic, f.partition), f.offset))
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition), offset)
        self._pause_owned()

    def release(self) -> None:
        """Resume fetching from every partition :meth:`hold` paused."""
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)
        self.holding = False

    def _pause_owned(self) -> None:
        owned = self.consumer.assignment()
        if owned:
            self.consumer.pause(*owned)

    def _poll(self, timeout_ms: int, max_records: int) -> list[RawFrame]:
        self._main.release()  # the rebalance listener may use the tracker while we wait in here
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:  # the broker away (a restart, say): keep the worker, poll again shortly
            log.warning("poll failed (%s: %s); polling again", type(exc).__name__, exc)
            time.sleep(min(1.0, timeout_ms / 1000))
            polled = {}
        finally:
            self._main.acquire()
        self.observe_assignment()
        return [RawFrame(tp.topic, tp.partition, r.offset, r.key, r.value, list(r.headers or []),
                         broker_ns=r.timestamp * 1_000_000 if r.timestamp_type == LOG_APPEND_TIME else None)
                for tp, records in polled.items() for r in records]

    def _commit_before_revoke(self, revoked: set[TopicPartition]) -> None:
        """Commit what is stored of partitions about to be revoked (rebalance listener, kafka-python's IO
        thread): only while the main thread waits in poll, without waiting for the commit's answer (the IO
        thread sends it, before the group's next generation begins)."""
        if not self._main.acquire(blocking=False):
            if not self._closing:  # at close, what is stored was committed just before
                log.info("partitions revoked while the main thread is busy (a join finishing after its poll): "
                         "stored frames not committed yet are redelivered")
            return
        try:
            self.collect_stored()
            # The tracker still holds the assignment before this rebalance: the revoked partitions are in it.
            commit = self.offsets.take_commit()
            if commit:
                self.consumer.commit_async({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                                            for (t, p), o in commit.items()})
                # Sent again after the rebalance for the partitions this member keeps: this commit's answer
                # is not awaited, and a kept partition keeps its position (nothing else would commit it).
                self._unsent = {**self._unsent, **commit}
                self._failed_at = time.monotonic()
                log.info("committed before revocation: %s", {f"{t}/{p}": o for (t, p), o in sorted(commit.items())})
        except Exception:  # noqa: BLE001 -- a listener error would fail the join; the frames are redelivered
            log.exception("commit before revocation failed; those frames are redelivered")
        finally:
            self._main.release()

    def observe_assignment(self) -> None:
        """Tell the tracker which partitions are owned now; drop the lag gauges of those that moved away."""
        gone = self.offsets.assign((tp.topic, tp.partition) for tp in self.consumer.assignment())
        for topic, partition in gone:
            telemetry.CONSUMER_LAG.remove(str(partition))
            self._unsent.pop((topic, partition), None)  # its new owner commits it now
        if gone:
            log.info("no longer owned: %s", sorted(f"{t}/{p}" for t, p in gone))

    def owns(self, frame: RawFrame) -> bool:
        """Whether ``frame``'s partition was owned at the last look (frames of others are dropped)."""
        return self.offsets.owns((frame.topic, frame.partition))

    def commit_stored(self) -> dict[Partition, int]:
        """Commit the offsets the tracker allows now (stored batches, in order, owned partitions).

        A refused or failed commit is logged, not raised, and sent again with the next commit (or by
        :meth:`retry_due`'s caller) for the partitions still owned then: a partition kept through a
        rebalance keeps its fetch position, so nothing else would ever move its committed offset up to
        frames already stored. A partition that moved away is its new owner's to commit; it re-reads
        those frames and the idempotent writes skip them.
        Returns:
            The offsets that were sent to the broker (empty when there was nothing to commit).
        """
        self.observe_assignment()  # ownership as of now, not as of the last poll
        commit = {**self._unsent, **self.offsets.take_commit()}  # newer offsets replace older unsent ones
        self._unsent = {}
        if not commit:
            return commit  # nothing stored yet, or all of it moved to another worker in a rebalance
        try:
            self.consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in commit.items()})
        except (CommitFailedError, KafkaError) as exc:  # a rebalance in progress, the coordinator away ...
            log.warning("offset commit failed (%s: %s); sent again shortly", type(exc).__name__, exc)
            self._unsent, self._failed_at = commit, time.monotonic()
        lag = self.offsets.record_lag(commit, lambda p: self.consumer.highwater(TopicPartition(*p)))
        for (_topic, partition), n in lag.items():
            telemetry.CONSUMER_LAG.labels(partition=str(partition)).set(n)
        return commit

    def retry_due(self, after_s: float = 1.0) -> bool:
        """Whether offsets of a failed commit wait to be sent again and ``after_s`` passed since it failed."""
        return bool(self._unsent) and time.monotonic() - self._failed_at >= after_s

    def close(self) -> None:
        """Leave the group without committing (what is stored was committed), so partitions move at once."""
        self._closing = True
        try:
            self.consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("consumer close: %s", exc)


class _Rebalance(ConsumerRebalanceListener):
    """Commits what is stored before partitions are revoked, and logs assignments. kafka-python runs these
    callbacks on its IO thread, so they must not block (``before_revoke`` never waits; see FrameConsumer).
    Frames still in flight for a revoked partition are committed later only if the partition is ours again
    by then, and are otherwise redelivered to its new owner, whose writes skip them."""

    def __init__(self, before_revoke: Callable[[set[TopicPartition]], None]):
        self.before_revoke = before_revoke

    def on_partitions_revoked(self, revoked):  # type: ignore[override]
        log.info("partitions revoked: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))
        if revoked:
            self.before_revoke(set(revoked))

    def on_partitions_lost(self, lost):  # type: ignore[override]
        # Forced out of the group: a commit would be refused; the new owners re-read those frames.
        log.warning("partitions lost: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in lost))

    def on_partitions_assigned(self, assigned):  # type: ignore[override]
        log.info("partitions assigned: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
