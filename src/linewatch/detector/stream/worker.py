"""The detector worker: a Kafka consumer-group member that inspects frames in micro-batches.

Pipeline (each stage a thread, connected by queues of one batch, so decoding, inference and
storing of consecutive batches overlap; :mod:`.stages`)::

    consumer (main thread) --raw batch--> decode --prepared--> inference --scored--> store
          ^                                                                            |
          +---------------------- stored: commit its offsets -------------------------+

Delivery is at-least-once: a batch's offsets are committed only after its results are in SQL,
Redis and the inspections topic (and its dead letters in the dead-letter topic), in the order the
batches were submitted (:mod:`.offsets`). Every write is idempotent per (camera_id, frame_id), so a
redelivered frame never makes a second row or count. On a rebalance, frames of partitions that moved
are dropped from the open batch, and those in flight are stored but not committed (their new owner
re-reads them and its writes ignore them); on SIGTERM or SIGINT the worker finishes, stores and commits
what it has, then leaves the group. Only the main thread calls the Kafka consumer (:mod:`.consumer`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import torch

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.kafka import make_consumer, make_producer
from linewatch.contracts.live_state import LiveStateWriter, connect_settings
from linewatch.contracts.settings import Settings

from ..model_files import ModelFileError
from ..scoring import Scorer
from . import telemetry
from .batches import RawBatch, RawFrame
from .batching import BatchCollector
from .consumer import FrameConsumer
from .heartbeat import send_heartbeats, worker_status
from .image_store import ImageStore
from .live_rebuild import LiveRebuilder, keep_live_state
from .model_slot import ModelSlot
from .offsets import OffsetTracker, next_offsets
from .result_store import ResultStore
from .stages import Pipeline

log = logging.getLogger(__name__)

MAX_PENDING_BATCHES = 3  # submitted but not committed; beyond this the main loop stops polling


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
        self.model = ModelSlot(Scorer(model_dir, self.det.device, settings.backbone.weights))
        cores = torch.get_num_threads()
        # (threads for a single frame, threads for a batch); set on the inference thread before each batch
        self._threads = (threads, threads) if threads else (max(1, cores - 1), cores)
        self.stop_event = threading.Event()
        self.started_at = time.time()
        self.offsets = OffsetTracker()
        self.pipeline: Pipeline | None = None

    # ---- public control -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the batches in flight, store and commit them, then leave the group (thread-safe)."""
        self.stop_event.set()

    def swap_model(self, model_dir: Path, version: str | None = None) -> None:
        """Load another model now and switch to it between two batches (thread-safe).

        ``version``: the registry version announced for ``model_dir``; the heartbeat reports it until the
        switch, and the files must carry it. Raises (the current model stays, the failure is recorded for the
        heartbeat): ModelFileError (incomplete files, checksum mismatch, another version's files),
        WeightsNotFoundError, ValueError.
        """
        if version is not None:
            self.model.announced(version)
        try:
            scorer = Scorer(model_dir, self.det.device, self.settings.backbone.weights)
            if version is not None and scorer.version != version:
                raise ModelFileError(f"{model_dir} holds model {scorer.version}, not {version}")
        except Exception as exc:
            self.model.load_failed(version or str(model_dir), exc)
            raise
        self.model.offer(scorer)

    @property
    def model_version(self) -> str:
        """The version of the model scoring now."""
        return self.model.current.version

    @property
    def failed(self) -> BaseException | None:
        """The exception a pipeline stage crashed with, if one did."""
        return self.pipeline.failed if self.pipeline else None

    # ---- main loop --------------------------------------------------------------------------------------

    def run(self, install_signal_handlers: bool = True) -> int:
        """Consume until stopped; returns the process exit code (0 after a clean stop, 1 after a crash)."""
        s = self.settings
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.request_stop())
        engine = make_engine(s.database_url, s.database.pool_size)
        migrate(engine)
        live = LiveStateWriter(connect_settings(s.redis), counts_ttl_s=s.redis.counts_ttl_s,
                               recent_cap=s.redis.recent_results_cap)
        producer = make_producer(s.kafka)
        store = ResultStore(engine, live, producer, s.kafka, ImageStore(s.image_store_root), self.worker_id,
                            on_retry=lambda sink, _e: telemetry.STORE_RETRIES.labels(sink=sink).inc(),
                            redis=s.redis)
        rebuilder = LiveRebuilder(engine, live, self.worker_id, s.redis.settle_s, s.redis.rebuild_window_s)
        pipeline = self.pipeline = Pipeline(self.model, self.det, self.worker_id, store, self._threads,
                                            self.stop_event)
        consumer = FrameConsumer(make_consumer(s.kafka, self.det.group_id), self.offsets)
        consumer.join(s.kafka.frames_topic)
        # The heartbeat reads the offsets tracker's snapshot, never the consumer (not thread-safe).
        heartbeat = threading.Thread(target=send_heartbeats, name="heartbeat", daemon=True, args=(
            live, self.worker_id,
            lambda: worker_status(self.model, pipeline.throughput, self.offsets.snapshot, self.started_at),
            self.stop_event))
        live_state = threading.Thread(target=keep_live_state, name="live-state", daemon=True,
                                      args=(store.live, rebuilder, self.stop_event))
        pipeline.start()
        heartbeat.start()
        live_state.start()
        log.info("worker %s consuming %s in group %s with model %s on %s", self.worker_id, s.kafka.frames_topic,
                 self.det.group_id, self.model.current.version, self.model.current.device)
        try:
            self._consume(consumer, pipeline)
        finally:
            self.stop_event.set()
            pipeline.close()
            heartbeat.join(timeout=10)
            live_state.join(timeout=10)
            store.live.flush(wait_s=5.0)  # what still waits for Redis, if it answers now
            consumer.close()  # leaves the group, so its partitions move at once
            producer.close(timeout=10)
            try:
                live.worker_gone(self.worker_id)
            except Exception as exc:  # noqa: BLE001 -- Redis may be the reason we are stopping
                log.debug("could not remove heartbeat: %s", exc)
            engine.dispose()
        if self.failed is not None:
            log.error("worker stopped after a fatal error: %r", self.failed)
            return 1
        log.info("worker %s stopped cleanly after %d inspections", self.worker_id, pipeline.throughput.inspected)
        return 0

    def _consume(self, consumer: FrameConsumer, pipeline: Pipeline) -> None:
        """Poll, batch and submit until stopped; then submit the open batch and drain (main thread)."""
        collector: BatchCollector[RawFrame] = BatchCollector(self.det.max_batch, self.det.max_wait_ms)
        while not self.stop_event.is_set():
            self._commit_stored(consumer, pipeline, block=False)
            if self.offsets.pending >= MAX_PENDING_BATCHES:
                self._commit_stored(consumer, pipeline, block=True, timeout=0.1)
                continue
            if collector.room:
                collector.add(consumer.poll(collector.wait_ms(), collector.room))
            # With at most one batch ahead (being decoded or scored), the open batch goes at once: its
            # decoding overlaps the model's work on the one before. With more ahead it grows meanwhile.
            if collector.ready(idle=pipeline.ahead <= 1):
                # After a rebalance, frames fetched for partitions we lost are re-read by their new owner.
                consumer.observe_assignment()
                collector.drop(consumer.owns)
                if collector.items:
                    self._submit(pipeline, collector.take())
        consumer.observe_assignment()
        collector.drop(consumer.owns)
        if collector.items and self.failed is None:
            self._submit(pipeline, collector.take())
        self._drain(consumer, pipeline, timeout_s=60)

    def _submit(self, pipeline: Pipeline, frames: list[RawFrame]) -> None:
        batch_id = self.offsets.submit(next_offsets((f.topic, f.partition, f.offset) for f in frames))
        pipeline.submit(RawBatch(batch_id, frames))

    def _commit_stored(self, consumer: FrameConsumer, pipeline: Pipeline, block: bool, timeout: float = 0.0
                       ) -> None:
        """Record the batches the store stage has finished, and commit what that allows."""
        stored = pipeline.take_stored(block, timeout)
        for batch_id in stored:
            self.offsets.stored(batch_id)
        if stored:
            consumer.commit_stored()

    def _drain(self, consumer: FrameConsumer, pipeline: Pipeline, timeout_s: float) -> None:
        """Wait until every submitted batch is stored and committed, at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.offsets.pending > 0 and time.monotonic() < deadline and self.failed is None:
            self._commit_stored(consumer, pipeline, block=True, timeout=0.1)
        if self.offsets.pending:
            log.warning("%d batch(es) not stored in time; their frames stay uncommitted", self.offsets.pending)
