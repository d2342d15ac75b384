"""The detector worker: a Kafka consumer-group member that inspects frames in micro-batches.

Pipeline (each stage a thread, connected by queues of one batch, so decoding, inference and
storing of consecutive batches overlap)::

    consumer (main thread) --raw batch--> decode --prepared--> inference --scored--> store
          ^                                                                            |
          +---------------------- stored: commit its offsets -------------------------+

Delivery is at-least-once: a batch's offsets are committed only after its results are in SQL,
Redis and the inspections topic (and its dead letters in the dead-letter topic). Every write is
idempotent per (camera_id, frame_id), so a redelivered frame never makes a second row or count.
On a rebalance, frames in flight for a partition that moved are stored but not committed (their new
owner re-reads them and its writes ignore them); on SIGTERM or SIGINT the worker finishes, stores and
commits what it has, then leaves the group.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from kafka import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.kafka import make_consumer, make_producer
from linewatch.contracts.live_state import LiveStateWriter, connect_settings
from linewatch.contracts.settings import Settings

from ..scoring import Scorer
from . import telemetry
from .batches import DeadLetter, PreparedBatch, PreparedFrame, RawBatch, RawFrame, ScoredBatch
from .batching import BatchCollector
from .frames import prepare_batch, prepare_frame
from .image_store import ImageStore, keep_good_sample
from .inspection import score_batch
from .result_store import ResultStore

log = logging.getLogger(__name__)

_STOP = object()


class DetectorWorker:
    """One worker process's consumer, pipeline and sinks.

    Args:
        settings: all settings (Kafka, Redis, SQL, detector section).
        model_dir: the model to score with (a new version can be swapped in with :meth:`swap_model`).
        worker_id: the name in heartbeats and results (default ``<host>-<pid>``).
        threads: CPU threads for the model. Default: all of torch's (its physical cores, or
            ``OMP_NUM_THREADS``) for batches of several frames, all but one for a single frame, so that
            decoding the next frame beside it does not stall the model's threads (bench/README.md).
    Raises (constructor):
        ModelFileError, WeightsNotFoundError: the model cannot be loaded.
    """

    def __init__(self, settings: Settings, model_dir: Path, worker_id: str | None = None,
                 threads: int | None = None):
        self.settings = settings
        self.det = settings.detector
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.scorer = Scorer(model_dir, self.det.device, settings.backbone.weights)
        cores = torch.get_num_threads()
        # (threads for a single frame, threads for a batch); set on the inference thread before each batch
        self._threads = (threads, threads) if threads else (max(1, cores - 1), cores)
        self._next_scorer: Scorer | None = None
        self.stop_event = threading.Event()
        self.failed: BaseException | None = None
        self.started_at = time.time()
        self.inspected = 0
        self.dead_lettered = 0
        self.lag: dict[str, int] = {}
        self._fps = _Rate()
        self._q_raw: queue.Queue = queue.Queue(maxsize=1)
        self._q_prepared: queue.Queue = queue.Queue(maxsize=1)
        self._q_scored: queue.Queue = queue.Queue(maxsize=1)
        self._q_done: queue.Queue = queue.Queue()
        self._inflight = 0
        self._submitted = 0  # batches handed to the decode stage (main thread)
        self._scored = 0  # batches the model has finished (inference thread)
        self._decode_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="decode")
        telemetry.MODEL_INFO.labels(version=self.scorer.version).set(1)

    # ---- public control -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the batches in flight, store and commit them, then leave the group (thread-safe)."""
        self.stop_event.set()

    def swap_model(self, model_dir: Path) -> None:
        """Load another model now and switch to it between two batches (thread-safe; raises on a bad model)."""
        scorer = Scorer(model_dir, self.det.device, self.settings.backbone.weights)
        self._next_scorer = scorer
        log.info("model %s loaded; switching after the current batch", scorer.version)

    @property
    def model_version(self) -> str:
        return self.scorer.version

    # ---- main loop --------------------------------------------------------------------------------------

    def run(self, install_signal_handlers: bool = True) -> int:
        """Consume until stopped; returns the process exit code (0 after a clean stop)."""
        s = self.settings
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.request_stop())
        engine = make_engine(s.database_url, s.database.pool_size)
        migrate(engine)
        redis_client = connect_settings(s.redis)
        live = LiveStateWriter(redis_client, counts_ttl_s=s.redis.counts_ttl_s, recent_cap=s.redis.recent_results_cap)
        producer = make_producer(s.kafka)
        self.store = ResultStore(engine, live, producer, s.kafka, ImageStore(s.image_store_root), self.worker_id,
                                 on_retry=lambda sink, _e: telemetry.STORE_RETRIES.labels(sink=sink).inc())
        self.live = live
        self.consumer = make_consumer(s.kafka, self.det.group_id)
        # Join only once the topic's partitions are known: a member that joins without them is assigned
        # nothing and has to rebalance the group again.
        deadline = time.monotonic() + 60
        while not self.consumer.partitions_for_topic(s.kafka.frames_topic) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.consumer.subscribe([s.kafka.frames_topic], listener=_Rebalance())
        threads = [threading.Thread(target=self._guard(f), name=n, daemon=True) for f, n in
                   ((self._decode_stage, "decode"), (self._inference_stage, "inference"), (self._store_stage, "store"),
                    (self._heartbeat_loop, "heartbeat"))]
        for t in threads:
            t.start()
        log.info("worker %s consuming %s in group %s with model %s on %s", self.worker_id, s.kafka.frames_topic,
                 self.det.group_id, self.scorer.version, self.scorer.device)
        collector: BatchCollector[RawFrame] = BatchCollector(self.det.max_batch, self.det.max_wait_ms)
        try:
            while not self.stop_event.is_set():
                self._commit_done(block=False)
                if self._inflight >= 3:
                    self._commit_done(block=True, timeout=0.1)
                    continue
                if collector.room:
                    polled = self.consumer.poll(timeout_ms=collector.wait_ms(), max_records=collector.room)
                    collector.add(_raw_frames(polled))
                # With at most one batch ahead (being decoded or scored), the open batch goes at once: its
                # decoding overlaps the model's work on the one before. With more ahead it grows meanwhile.
                if collector.ready(idle=self._submitted - self._scored <= 1):
                    # After a rebalance, frames fetched for partitions we lost are re-read by their new owner.
                    collector.drop(self._owned)
                    if collector.items:
                        self._submit(collector.take())
            collector.drop(self._owned)
            if collector.items and self.failed is None:
                self._submit(collector.take())
            self._drain(timeout_s=60)
        finally:
            self.stop_event.set()
            self._put(self._q_raw, _STOP)
            for t in threads:
                t.join(timeout=10)
            self._close(producer, live)
            engine.dispose()
        if self.failed is not None:
            log.error("worker stopped after a fatal error: %r", self.failed)
            return 1
        log.info("worker %s stopped cleanly after %d inspections", self.worker_id, self.inspected)
        return 0

    def _close(self, producer, live: LiveStateWriter) -> None:
        try:
            self.consumer.close(autocommit=False)  # leaves the group, so its partitions move at once
        except KafkaError as exc:
            log.warning("consumer close: %s", exc)
        producer.close(timeout=10)
        try:
            live.worker_gone(self.worker_id)
        except Exception as exc:  # noqa: BLE001 -- Redis may be the reason we are stopping
            log.debug("could not remove heartbeat: %s", exc)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, frames: list[RawFrame]) -> None:
        offsets: dict[tuple[str, int], int] = {}
        for f in frames:
            key = (f.topic, f.partition)
            offsets[key] = max(offsets.get(key, 0), f.offset + 1)
        self._inflight += 1
        self._submitted += 1
        self._put(self._q_raw, RawBatch(frames, offsets))

    def _put(self, q: queue.Queue, item: object) -> None:
        """``q.put(item)``, given up when a pipeline stage has crashed (it would never take the item)."""
        while self.failed is None:
            try:
                q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _commit_done(self, block: bool, timeout: float = 0.0) -> None:
        """Commit the offsets of every batch the store stage has finished (in submission order)."""
        while True:
            try:
                offsets = self._q_done.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return
            block = False
            self._inflight -= 1
            owned = self.consumer.assignment()
            commit = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()
                      if TopicPartition(t, p) in owned}
            if not commit:
                continue  # all of it moved to another worker in a rebalance: it will re-read (and skip) these
            try:
                self.consumer.commit(commit)
            except CommitFailedError as exc:
                # The group moved on (a rebalance); the new owner re-reads these frames and the idempotent
                # writes ignore them.
                log.warning("offset commit rejected after a rebalance: %s", exc)
            except KafkaError as exc:
                log.warning("offset commit failed (%s); these frames will be redelivered and deduplicated", exc)
            for tp, om in commit.items():
                high = self.consumer.highwater(tp)
                if high is not None:
                    self.lag[f"{tp.topic}/{tp.partition}"] = max(0, high - om.offset)
                    telemetry.CONSUMER_LAG.labels(partition=str(tp.partition)).set(max(0, high - om.offset))

    def _drain(self, timeout_s: float) -> None:
        """Wait until every submitted batch is stored and committed, at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._inflight > 0 and time.monotonic() < deadline and self.failed is None:
            self._commit_done(block=True, timeout=0.1)
        if self._inflight:
            log.warning("%d batch(es) not stored in time; their frames stay uncommitted", self._inflight)

    def _owned(self, frame: RawFrame) -> bool:
        return TopicPartition(frame.topic, frame.partition) in self.consumer.assignment()

    # ---- pipeline stages (each in its own thread) ------------------------------------------------------

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # a bug, not bad input: stop without committing what is unstored
                log.exception("pipeline stage %s crashed", threading.current_thread().name)
                self.failed = exc
                self.stop_event.set()
        return run

    def _decode_stage(self) -> None:
        while True:
            batch = self._q_raw.get()
            if batch is _STOP:
                self._q_prepared.put(_STOP)
                return
            scorer = self.scorer
            out = prepare_batch(batch.frames, scorer.image_size, self.det.max_pixels, scorer.device,
                                self._decode_pool)
            frames = [o for o in out if isinstance(o, PreparedFrame)]
            dead = [o for o in out if isinstance(o, DeadLetter)]
            for d in dead:
                log.warning("dead-lettering %s: %s (%s)", d.raw.source, d.reason, d.detail)
            self._q_prepared.put(PreparedBatch(frames, dead, batch.offsets))

    def _inference_stage(self) -> None:
        while True:
            try:
                batch = self._q_prepared.get(timeout=0.5)
            except queue.Empty:
                self._maybe_switch_model()  # an idle line switches at once
                continue
            if batch is _STOP:
                self._q_scored.put(_STOP)
                return
            self._maybe_switch_model()
            scored = self._score(batch)
            self._scored += 1
            self._q_scored.put(scored)

    def _maybe_switch_model(self) -> None:
        """Model rollout: called only between batches, so no batch is scored by two models."""
        if self._next_scorer is None:
            return
        self.scorer, self._next_scorer = self._next_scorer, None
        telemetry.MODEL_INFO.clear()
        telemetry.MODEL_INFO.labels(version=self.scorer.version).set(1)
        log.info("now scoring with model %s", self.scorer.version)

    def _score(self, batch: PreparedBatch) -> ScoredBatch:
        scorer = self.scorer
        frames = batch.frames
        threads = self._threads[len(frames) > 1]
        if scorer.device.type == "cpu" and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        if frames and frames[0].model_input.shape[-1] != scorer.image_size:  # a swap changed the input size
            redo = [prepare_frame(f.raw, scorer.image_size, self.det.max_pixels) for f in frames]
            frames = [f for f in redo if isinstance(f, PreparedFrame)]
        batch = score_batch(scorer, frames, self.worker_id,
                            lambda m: keep_good_sample(m.camera_id, m.frame_id, self.det.good_sample_rate),
                            batch.dead, batch.offsets)
        if frames:
            telemetry.INFERENCE_SECONDS.observe(batch.results[0].latency.inference_ms / 1000)
            telemetry.BATCH_SIZE.observe(len(frames))
        return batch

    def _store_stage(self) -> None:
        while True:
            batch = self._q_scored.get()
            if batch is _STOP:
                return
            if not self.store.store(batch, self.stop_event):
                continue  # stopped while a sink was down: leave the batch uncommitted
            for r in batch.results:
                telemetry.INSPECTED.labels(verdict=r.verdict).inc()
                telemetry.LATENCY_SECONDS.observe(r.latency.total_ms / 1000)
            for d in batch.dead:
                telemetry.DEAD_LETTERED.labels(reason=d.reason).inc()
            self.inspected += len(batch.results)
            self.dead_lettered += len(batch.dead)
            self._fps.add(len(batch.results))
            self._q_done.put(batch.offsets)

    def _heartbeat_loop(self) -> None:
        while not self.stop_event.wait(2.0):
            try:
                self.live.heartbeat(self.worker_id, {
                    "model_version": self.scorer.version, "frames_per_s": round(self._fps.rate(), 2),
                    "inspected": self.inspected, "dead_lettered": self.dead_lettered,
                    "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in self.consumer.assignment()),
                    "lag": self.lag, "device": str(self.scorer.device),
                    "host": socket.gethostname(), "pid": os.getpid(), "started_at": self.started_at,
                })
            except Exception as exc:  # noqa: BLE001 -- a missed heartbeat is not worth stopping for
                log.debug("heartbeat failed: %s", exc)


class _Rebalance(ConsumerRebalanceListener):
    """Logs assignments. kafka-python runs these callbacks on its network thread, so they must not block
    (no draining, no commits here): frames in flight for a revoked partition are committed only if the
    partition is still ours, and are otherwise redelivered to its new owner, whose writes ignore them."""

    def on_partitions_revoked(self, revoked):  # type: ignore[override]
        log.info("partitions revoked: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    def on_partitions_assigned(self, assigned):  # type: ignore[override]
        log.info("partitions assigned: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))


class _Rate:
    """Frames per second over the last 10 s."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self.events: list[tuple[float, int]] = []
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.events.append((time.monotonic(), n))

    def rate(self) -> float:
        now = time.monotonic()
        with self.lock:
            self.events = [(t, n) for t, n in self.events if now - t <= self.window_s]
            return sum(n for _, n in self.events) / self.window_s


def _raw_frames(polled: dict) -> list[RawFrame]:
    out = []
    for tp, records in polled.items():
        for r in records:
            out.append(RawFrame(tp.topic, tp.partition, r.offset, r.key, r.value, list(r.headers or [])))
    return out
