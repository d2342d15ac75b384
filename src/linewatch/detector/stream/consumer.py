"""The worker's consumer-group member: the one place that talks to kafka-python's consumer.

kafka-python's consumer is not thread-safe, so a :class:`FrameConsumer` is used from the worker's main
thread only. It turns polled records into :class:`.batches.RawFrame`, tells the :class:`.offsets.OffsetTracker`
which partitions are owned after every poll and before every commit, commits what the tracker allows, and
keeps the lag gauges of owned partitions only. Other threads learn the assignment and lag from the
tracker's snapshot, never from the consumer.
"""

from __future__ import annotations

import logging
import time
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
    """

    def __init__(self, consumer: Any, offsets: OffsetTracker):
        self.consumer = consumer
        self.offsets = offsets

    def join(self, topic: str, wait_s: float = 60.0) -> None:
        """Subscribe to ``topic`` once its partitions are known (at most ``wait_s`` later).

        Why wait: a member that joins before the topic's metadata arrived is assigned nothing and has to
        rebalance the group again.
        """
        deadline = time.monotonic() + wait_s
        while not self.consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.consumer.subscribe([topic], listener=_LogRebalance())

    def poll(self, timeout_ms: int, max_records: int) -> list[RawFrame]:
        """Fetch up to ``max_records`` frames (rebalances happen in here), then record the assignment.

        A poll that fails (the broker away) returns no frames instead of raising: the worker keeps its batches
        in flight and polls again, and kafka-python reconnects and rejoins the group when the broker is back.
        """
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:  # the broker away (a restart, say): keep the worker, poll again shortly
            log.warning("poll failed (%s: %s); polling again", type(exc).__name__, exc)
            time.sleep(min(1.0, timeout_ms / 1000))
            polled = {}
        self.observe_assignment()
        return [RawFrame(tp.topic, tp.partition, r.offset, r.key, r.value, list(r.headers or []),
                         broker_ns=r.timestamp * 1_000_000 if r.timestamp_type == LOG_APPEND_TIME else None)
                for tp, records in polled.items() for r in records]

    def observe_assignment(self) -> None:
        """Tell the tracker which partitions are owned now; drop the lag gauges of those that moved away."""
        gone = self.offsets.assign((tp.topic, tp.partition) for tp in self.consumer.assignment())
        for _topic, partition in gone:
            telemetry.CONSUMER_LAG.remove(str(partition))
        if gone:
            log.info("no longer owned: %s", sorted(f"{t}/{p}" for t, p in gone))

    def owns(self, frame: RawFrame) -> bool:
        """Whether ``frame``'s partition was owned at the last look (frames of others are dropped)."""
        return self.offsets.owns((frame.topic, frame.partition))

    def commit_stored(self) -> dict[Partition, int]:
        """Commit the offsets the tracker allows now (stored batches, in order, owned partitions).

        A refused or failed commit is logged, not raised: those frames are redelivered (to this worker or
        the partition's new owner) and the idempotent writes skip them.
        Returns:
            The offsets that were sent to the broker (empty when there was nothing to commit).
        """
        self.observe_assignment()  # ownership as of now, not as of the last poll
        commit = self.offsets.take_commit()
        if not commit:
            return commit  # nothing stored yet, or all of it moved to another worker in a rebalance
        try:
            self.consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in commit.items()})
        except CommitFailedError as exc:
            # The group moved on (a rebalance); the new owner re-reads these frames.
            log.warning("offset commit rejected after a rebalance: %s", exc)
        except KafkaError as exc:
            log.warning("offset commit failed (%s); these frames will be redelivered and deduplicated", exc)
        lag = self.offsets.record_lag(commit, lambda p: self.consumer.highwater(TopicPartition(*p)))
        for (_topic, partition), n in lag.items():
            telemetry.CONSUMER_LAG.labels(partition=str(partition)).set(n)
        return commit

    def close(self) -> None:
        """Leave the group without committing (what is stored was committed), so partitions move at once."""
        try:
            self.consumer.close(autocommit=False)
        except KafkaError as exc:
            log.warning("consumer close: %s", exc)


class _LogRebalance(ConsumerRebalanceListener):
    """Logs assignments. kafka-python may run these callbacks on its network thread, so they must not block
    and must not touch the worker's state (no draining, no commits, no tracker updates here): the main thread
    reads the assignment after each poll, frames in flight for a revoked partition are committed only if the
    partition is ours again by then, and are otherwise redelivered to its new owner, whose writes skip them."""

    def on_partitions_revoked(self, revoked):  # type: ignore[override]
        log.info("partitions revoked: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    def on_partitions_assigned(self, assigned):  # type: ignore[override]
        log.info("partitions assigned: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
