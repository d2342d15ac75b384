"""A stalled worker is visible: progress figures from the offsets tracker, /healthz and /readyz, heartbeats in
Redis that carry them and expire when a worker dies, the dashboard's status column (issue 13)."""

from __future__ import annotations

import json
import time

from prometheus import status

from linewatch.cli.embedded import free_port
from linewatch.contracts.live_state import WORKER_EXPIRE_S, LiveStateReader, LiveStateWriter, connect_settings
from linewatch.contracts.settings import RedisSettings
from linewatch.dashboard.pages.live import _status
from linewatch.detector.stream.offsets import OffsetTracker
from linewatch.detector.stream.progress import progress
from linewatch.observability import serve_metrics

P0 = ("t.frames", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_oldest_batch_in_flight_and_the_last_commit_are_measured_from_the_snapshot():
    clock = Clock()
    tracker = OffsetTracker(clock)
    tracker.assign([P0])
    first = tracker.submit({P0: 5})
    clock.now += 10
    tracker.submit({P0: 9})
    clock.now += 50
    figures = progress(tracker.snapshot, loop_at=clock.now - 1, now=clock.now)
    assert (figures.pending_batches, figures.oldest_batch_age_s, figures.since_commit_s) == (2, 60.0, None)
    assert figures.stalled(120) is None
    assert figures.stalled(45) == "stalled 60 s: oldest batch in flight"
    tracker.stored(first)
    assert tracker.take_commit() == {P0: 5}
    clock.now += 3
    figures = progress(tracker.snapshot, loop_at=clock.now, now=clock.now)
    assert (figures.pending_batches, figures.oldest_batch_age_s, figures.since_commit_s) == (1, 53.0, 3.0)
    assert figures.heartbeat_fields(45) == {"pending_batches": 1, "oldest_batch_age_s": 53.0, "since_commit_s": 3.0,
                                            "stalled": "stalled 53 s: oldest batch in flight"}
    # Nothing in flight: never stalled by batches, only by a consumer loop that stopped going round.
    idle = progress(OffsetTracker(clock).snapshot, loop_at=clock.now - 200, now=clock.now)
    assert idle.oldest_batch_age_s is None
    assert idle.stalled(120) == "stalled 200 s: consumer loop silent"


def test_healthz_and_readyz_answer_503_with_the_reason_while_stalled():
    problem: list[str | None] = [None]
    port = free_port()
    server = serve_metrics(port, ready=lambda: True, host="127.0.0.1", problem=lambda: problem[0])
    try:
        assert (status(port, "/healthz"), status(port, "/readyz")) == (200, 200)
        problem[0] = "stalled 45 s: oldest batch in flight"
        assert (status(port, "/healthz"), status(port, "/readyz")) == (503, 503)
    finally:
        server.shutdown()


def test_a_dead_workers_heartbeat_expires_and_a_stalled_one_is_marked(redis_url):
    settings = RedisSettings(url=redis_url)
    client = connect_settings(settings)
    client.delete("linewatch:workers")
    # A worker killed long ago (SIGKILL: it never removed its entry).
    client.hset("linewatch:workers", "dead-1", json.dumps({"worker_id": "dead-1",
                                                            "last_seen": time.time() - WORKER_EXPIRE_S - 5}))
    reader = LiveStateReader(client)
    assert reader.workers() == []  # hidden at once
    live = LiveStateWriter(client)
    live.heartbeat("w-1", {"model_version": "v1", "pending_batches": 3, "oldest_batch_age_s": 45.2,
                           "since_commit_s": 44.0, "stalled": "stalled 45 s: oldest batch in flight"})
    assert client.hkeys("linewatch:workers") == [b"w-1"]  # and removed by the next heartbeat
    (beat,) = reader.workers()
    assert beat["alive"] and beat["oldest_batch_age_s"] == 45.2
    assert _status(beat) == "stalled 45 s: oldest batch in flight"
    assert _status({**beat, "stalled": None}) == "alive"
    assert _status({**beat, "alive": False}) == "silent"
    client.delete("linewatch:workers")


def test_stored_offsets_are_committed_before_revocation_only_while_the_main_thread_polls():
    from kafka.structs import TopicPartition
    from test_offsets import TOPIC, FakeConsumer

    from linewatch.detector.stream.consumer import FrameConsumer

    class Member(FakeConsumer):
        listener = None
        async_commits: list = []

        def subscribe(self, topics, listener=None):
            self.listener = listener

        def commit_async(self, offsets):
            self.async_commits.append({tp: om.offset for tp, om in offsets.items()})

        def poll(self, timeout_ms=0, max_records=None):  # a rebalance starts inside this poll
            if self.revoke_now:
                self.listener.on_partitions_revoked(set(self.position))
            return super().poll(timeout_ms, max_records)

    fake = Member()
    fake.revoke_now = False
    fake.produce(0, 4)
    fake.rebalance(0)
    tracker = OffsetTracker()
    stored: list[int] = []
    member = FrameConsumer(fake, tracker, lambda: [tracker.stored(b) for b in stored] and stored.clear())
    member.join(TOPIC)
    frames = member.poll(0, 4)
    stored.append(tracker.submit({(TOPIC, 0): frames[-1].offset + 1}))  # stored by the pipeline, not yet seen
    fake.revoke_now = True
    member.poll(0, 1)
    assert fake.async_commits == [{TopicPartition(TOPIC, 0): 4}]
    assert tracker.pending == 0
    # Outside a poll (the main thread busy, e.g. closing) the listener leaves the tracker alone.
    stored.append(tracker.submit({(TOPIC, 0): 5}))
    fake.listener.on_partitions_revoked({TopicPartition(TOPIC, 0)})
    assert len(fake.async_commits) == 1 and tracker.pending == 1
