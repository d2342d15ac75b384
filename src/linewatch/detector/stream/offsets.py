"""Which offsets a detector worker may commit, and how far behind it is: the at-least-once bookkeeping.

Plain data: no threads, no Kafka. The worker's main thread owns an :class:`OffsetTracker` and is the only
caller of its methods; :mod:`.consumer` adapts kafka-python's ``TopicPartition`` and ``OffsetAndMetadata``
to the ``(topic, partition)`` tuples used here. Other threads (the heartbeat) read only
:attr:`OffsetTracker.snapshot`, an immutable value that is replaced whole, never changed in place.

The rules, which are the worker's delivery guarantee:

- A batch's offsets are committed only once the batch is stored (SQL, Redis, result topic).
- Batches are committed in the order they were submitted: one stored before an older one waits for it,
  since committing it first would move its partitions' committed offsets past frames not yet stored.
  (The worker's stages are first-in first-out, so today they finish in order; the rule does not rely on it.)
- Only partitions owned when the commit is made are committed. Frames of a partition that moved to another
  worker are re-read by their new owner, whose idempotent writes skip the ones already stored here.
- Lag is kept per owned partition (high-water mark minus the offset just committed) and forgotten as soon
  as the partition is no longer owned, so no stale figure outlives a rebalance.
- Progress is kept beside it: when the oldest batch not committed yet was submitted, and when offsets were
  last taken for a commit, so that a worker whose batches stop moving can be seen as stalled
  (:mod:`.progress`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

Partition = tuple[str, int]
"""A partition of a topic: ``(topic, partition)``. kafka-python's ``TopicPartition`` is such a tuple."""


def next_offsets(positions: Iterable[tuple[str, int, int]]) -> dict[Partition, int]:
    """Per partition, the offset to commit once these messages are stored: one past the highest offset.

    Args:
        positions: ``(topic, partition, offset)`` of each consumed message, in any order.
    Returns:
        ``{(topic, partition): highest offset + 1}`` (a Kafka commit names the next message to read).
    """
    out: dict[Partition, int] = {}
    for topic, partition, offset in positions:
        key = (topic, partition)
        out[key] = max(out.get(key, 0), offset + 1)
    return out


@dataclass(frozen=True)
class Snapshot:
    """The partitions a worker owned and their lag, as of the main thread's last look at its consumer, and
    how its batches are moving.

    Immutable, so any thread may read it while the main thread publishes the next one.
    ``pending``: batches submitted and not yet taken for a commit; ``oldest_batch_at``: when the oldest of
    them was submitted (None when there is none); ``last_commit_at``: when stored batches were last taken
    for a commit (None before the first). Both times are the tracker's clock (``time.monotonic``, seconds).
    """

    partitions: frozenset[Partition] = frozenset()
    lag: Mapping[Partition, int] = field(default_factory=lambda: MappingProxyType({}))
    pending: int = 0
    oldest_batch_at: float | None = None
    last_commit_at: float | None = None

    def partition_names(self) -> list[str]:
        """Owned partitions as ``"topic/partition"``, sorted (the heartbeat's ``partitions``)."""
        return sorted(f"{t}/{p}" for t, p in self.partitions)

    def lag_by_name(self) -> dict[str, int]:
        """Lag per ``"topic/partition"`` (the heartbeat's ``lag``)."""
        return {f"{t}/{p}": n for (t, p), n in sorted(self.lag.items())}


class OffsetTracker:
    """Batches submitted and stored, the current assignment, what may be committed, and lag.

    Not thread-safe by design: one thread (the worker's main thread) calls every method; other threads
    read :attr:`snapshot` only. ``clock``: the time source of the snapshot's progress times (seconds).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._submitted_at: dict[int, float] = {}  # batch id -> when submitted, for batches not taken yet
        self._last_commit_at: float | None = None
        # batch id -> next offset per partition, for batches not yet committed, in submission order
        # (dicts keep insertion order, and ids only grow).
        self._batches: dict[int, dict[Partition, int]] = {}
        self._stored: set[int] = set()
        self._next_id = 0
        self._owned: frozenset[Partition] = frozenset()
        self._lag: dict[Partition, int] = {}
        self.snapshot = Snapshot()

    # ---- batches ---------------------------------------------------------------------------------------

    def submit(self, offsets: Mapping[Partition, int]) -> int:
        """Record a batch handed to the pipeline; returns its id (0, 1, 2 ... in submission order).

        Args:
            offsets: per partition, the offset to commit once the batch is stored (:func:`next_offsets`).
        """
        batch_id = self._next_id
        self._next_id += 1
        self._batches[batch_id] = dict(offsets)
        self._submitted_at[batch_id] = self.clock()
        self._publish()
        return batch_id

    def stored(self, batch_id: int) -> None:
        """Record that a batch's results are stored (its offsets may be committed once older ones are).

        Raises:
            KeyError: ``batch_id`` was never submitted, or was already committed.
        """
        if batch_id not in self._batches:
            raise KeyError(f"batch {batch_id} is not awaiting a commit")
        self._stored.add(batch_id)

    @property
    def pending(self) -> int:
        """Batches submitted whose offsets have not been taken for a commit yet (stored or not)."""
        return len(self._batches)

    def take_commit(self) -> dict[Partition, int]:
        """Take the stored batches at the head of the submission order: the offsets to commit now.

        Stops at the first batch not stored yet; the batches taken are forgotten, committed or not.
        Returns:
            Per owned partition, the offset of the newest batch taken that holds frames of it (as
            committing the batches one after the other would leave it). Partitions no longer owned are
            left out; empty when there is nothing to commit.
        """
        out: dict[Partition, int] = {}
        taken = False
        for batch_id in list(self._batches):
            if batch_id not in self._stored:
                break
            self._stored.discard(batch_id)
            self._submitted_at.pop(batch_id, None)
            out.update(self._batches.pop(batch_id))
            taken = True
        if taken:
            self._last_commit_at = self.clock()
            self._publish()
        return {p: o for p, o in out.items() if p in self._owned}

    # ---- assignment and lag ----------------------------------------------------------------------------

    def assign(self, partitions: Iterable[Partition]) -> frozenset[Partition]:
        """Record the partitions the consumer owns now (after a poll, or before a commit).

        Returns:
            The partitions owned before and not now; their lag is forgotten.
        """
        owned = frozenset((t, p) for t, p in partitions)
        gone = self._owned - owned
        if owned != self._owned:
            self._owned = owned
            for p in gone:
                self._lag.pop(p, None)
            self._publish()
        return gone

    def owns(self, partition: Partition) -> bool:
        """Whether ``partition`` was in the last recorded assignment."""
        return partition in self._owned

    def record_lag(self, committed: Mapping[Partition, int], highwater: Callable[[Partition], int | None]
                   ) -> dict[Partition, int]:
        """Update the lag of the partitions just committed: high-water mark minus committed offset (>= 0).

        Args:
            committed: the offsets just committed (from :meth:`take_commit`).
            highwater: a partition's high-water mark (the offset its next message will get), or None when
                unknown yet; a partition without one keeps its previous lag.
        Returns:
            The lag values set now (partitions not owned any more are skipped).
        """
        now = {}
        for p, offset in committed.items():
            high = highwater(p)
            if high is not None and p in self._owned:
                now[p] = max(0, high - offset)
        if now:
            self._lag.update(now)
            self._publish()
        return now

    def _publish(self) -> None:
        # A new object each time (one attribute store): a reader sees the old snapshot or the new one.
        oldest = next(iter(self._submitted_at.values()), None)  # ids only grow: the first is the oldest
        self.snapshot = Snapshot(self._owned, MappingProxyType(dict(self._lag)), len(self._batches), oldest,
                                 self._last_commit_at)
