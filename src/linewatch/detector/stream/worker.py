"""The detector worker: a Kafka consumer-group member that inspects frames in micro-batches.

Pipeline (each stage a thread, connected by queues of one batch, so decoding, inference and
storing of consecutive batches overlap; :mod:`.stages`)::

    consumer (main thread) --raw batch--> decode --prepared--> inference --scored--> store
          ^                                                                            |
          +---------------------- stored: commit its offsets -------------------------+

Delivery is at-least-once: a batch's offsets are committed only after its results are in SQL,
Redis and the inspections topic (and its dead letters in the dead-letter topic), in the order the
batches were submitted (:mod:`.offsets`). Every write is idempotent per (camera_id, frame_id), so a
redelivered frame never makes a second row or count. On a rebalance, what is stored is committed before
the partitions go (:mod:`.consumer`), frames of partitions that moved are dropped from the open batch, and
those in flight are stored but not committed (their new owner re-reads them and its writes ignore them).
Only the main thread calls the Kafka consumer.

A slow worker stays a member: the main thread polls at least every ``HOLD_WAIT_S`` whatever the pipeline
is doing (with its partitions paused while the pipeline is full), because kafka-python makes a member
that does not poll for ``max_poll_interval_ms`` leave the group, and every leave re-reads the frames in
flight. Batches are also sized to a time budget (``BATCH_TIME_SHARE`` of the smaller of
``max_poll_interval_ms`` and ``detector.stall_after_s``, from the measured scoring time per frame), which
bounds a frame's wait, the work redone after a rebalance and the time a stop takes.

On SIGTERM or SIGINT the worker stops fetching, lets the batches in flight finish and commits them (at most
``DRAIN_S``; after that the rest is abandoned uncommitted), frames not submitted yet are left to the next
owner, the consumer leaves the group, and every stage thread is joined before the process exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import redis

from linewatch.contracts.clock import ClockRule
from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.kafka import make_consumer, make_producer
from linewatch.contracts.live_state import LiveStateWriter, connect_settings, eviction_warning
from linewatch.contracts.products import DEFAULT_PRODUCT
from linewatch.contracts.settings import Settings

from ..model_files import ModelFileError
from ..runtimes.threads import apply_torch_threads, intra_op_threads
from ..scoring import WINDOWS_PER_PASS, Scorer
from . import telemetry
from .batches import RawBatch, RawFrame
from .batching import BatchCollector
from .consumer import FrameConsumer
from .heartbeat import send_heartbeats, worker_status
from .image_retention import ImageRetention, RetentionRule, keep_image_store
from .image_store import ImageStore
from .live_rebuild import LiveRebuilder, keep_live_state
from .model_shelf import ModelShelf
from .model_slot import ModelSlot
from .offsets import OffsetTracker, next_offsets
from .progress import progress
from .result_store import ResultStore
from .routing import ProductRouter
from .stages import Pipeline

log = logging.getLogger(__name__)

# A held poll waits this long (ms): a poll that never waits can keep answering a rebalance with a new join
# before the group settles (suspected from a CI run where a held member went through 285 generations in 15 s).
HOLD_POLL_MS = 20
WAITING_SHOWN_AFTER_S = 10.0  # a store refusing for longer is reported (heartbeat, /readyz); shorter is a blip

MAX_PENDING_BATCHES = 3  # submitted but not committed; beyond this the partitions are paused (still polled)
HOLD_WAIT_S = 0.05  # while the pipeline is full: wait this long for a stored batch between two polls
BATCH_TIME_SHARE = 0.2  # a batch's scoring time budget, as a share of min(max_poll_interval, stall_after_s)
DRAIN_S = 60.0  # on a stop: longest wait for the batches in flight to be stored and committed


class DetectorWorker:
    """One worker process's consumer, pipeline and sinks.

    Args:
        settings: all settings (Kafka, Redis, SQL, detector section).
        model_dir: a model for the product ``default`` before (or instead of) the registry's; None: only the
            models announced to :attr:`models` (:meth:`.model_shelf.ModelShelf.announce`) score. Frames are routed
            to their product's model (:mod:`.routing`).
        worker_id: the name in heartbeats and results (default ``<host>-<pid>``).
        threads: CPU threads for the model. Default: this worker's share of the CPUs
            (:func:`..runtimes.threads.intra_op_threads` of ``detector.workers_on_host``) for batches of several
            frames, all but one for a single frame, so that decoding the next frame beside it does not stall the
            model's threads (bench/README.md). An export runtime (ONNX Runtime, OpenVINO) uses the batch count.
        stop_event: set to stop the worker (default: a new one; ``linewatch detect`` passes the one its
            signal handlers set, installed before the model loads).
    Raises (constructor):
        ModelFileError, WeightsNotFoundError: ``model_dir`` cannot be loaded.
    """

    def __init__(self, settings: Settings, model_dir: Path | None, worker_id: str | None = None,
                 threads: int | None = None, stop_event: threading.Event | None = None):
        self.settings = settings
        self.det = settings.detector
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        cores = threads or intra_op_threads(self.det.workers_on_host)
        # (threads for a single frame, threads for a batch); set on the inference thread before each batch
        self._threads = (threads, threads) if threads else (max(1, cores - 1), cores)
        apply_torch_threads(cores)  # before the model loads: runtime auto times torch at this count
        self.models = ModelShelf(self._load, self.det.model_memory_mb * 2**20)
        if model_dir is not None:
            self.models.install(DEFAULT_PRODUCT, self._load(model_dir))
        self.stop_event = stop_event or threading.Event()
        self.started_at = time.time()
        self.offsets = OffsetTracker()
        self.pipeline: Pipeline | None = None
        self.retention: ImageRetention | None = None
        self.loop_at = time.monotonic()  # the consumer loop's last round (read by other threads: progress)
        self.threads_ended = True  # False when a pipeline stage was still running at the end of run()
        share = BATCH_TIME_SHARE * min(settings.kafka.max_poll_interval_ms / 1000, self.det.stall_after_s)
        self.batch_budget_s = share

    # ---- public control -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the batches in flight, store and commit them, then leave the group (thread-safe)."""
        self.stop_event.set()

    def _load(self, model_dir: Path) -> Scorer:
        """A scorer of ``model_dir`` at this worker's device and runtime, warmed up for batches up to
        ``detector.max_batch`` windows, at most ``WINDOWS_PER_PASS`` (:meth:`Scorer.warm_up`); an export runtime
        gets the threads of a batch (its count is fixed when it loads). Raises: as :class:`Scorer`;
        ModelFileError: the warm-up batches failed."""
        scorer = Scorer(model_dir, self.det.device, self.settings.backbone.weights, runtime=self.det.runtime,
                        threads=self._threads[1])
        try:
            seconds = scorer.warm_up(self.det.max_batch)
        except Exception as exc:  # noqa: BLE001 -- the runtime's own errors: this model does not load
            raise ModelFileError(f"{model_dir}: {scorer.runtime} failed on its warm-up batches: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if seconds:
            log.info("model %s: %s warmed up for batches up to %d in %.1f s", scorer.version, scorer.runtime,
                     min(self.det.max_batch, WINDOWS_PER_PASS), seconds)
        return scorer

    @property
    def model(self) -> ModelSlot | None:
        """The default product's model slot, else the one used last (a single-product worker's only one)."""
        return self.models.first()

    @property
    def model_version(self) -> str | None:
        """The version of :attr:`model` scoring now (None before any model is held)."""
        return slot.current.version if (slot := self.model) is not None else None

    def stalled(self) -> str | None:
        """Why the worker counts as stalled (:mod:`.progress`), or None (thread-safe). A worker waiting for a
        store that refuses (the database, the broker away) is not stalled: restarting it would not bring the
        store back; it is not ready instead (:attr:`ready`)."""
        if self.waiting_on() is not None:
            return None
        return progress(self.offsets.snapshot, self.loop_at).stalled(self.det.stall_after_s)

    def waiting_on(self) -> str | None:
        """``"sql 45 s"``: the store a batch has waited for longer than a few seconds, or None (thread-safe)."""
        waiting = self.pipeline.store.waiting() if self.pipeline is not None else None
        if waiting is None or waiting[1] < WAITING_SHOWN_AFTER_S:
            return None
        return f"{waiting[0]} {waiting[1]:.0f} s"

    @property
    def ready(self) -> bool:
        """Not stopping, kept frames can be written (a full image store is an alarm), and no store has kept a
        batch waiting (``/readyz``)."""
        return not self.stop_event.is_set() and not (self.retention is not None and self.retention.full) \
            and self.waiting_on() is None

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
                               recent_cap=s.redis.recent_results_cap,
                               clock=ClockRule(s.detector.clock_ahead_s, s.detector.clock_behind_s))
        with contextlib.suppress(redis.RedisError):  # Redis away at start: the live sink waits it out
            if (warning := eviction_warning(live.r)) is not None:
                log.warning(warning)
        producer = make_producer(s.kafka)
        retention = self.retention = ImageRetention(engine, s.image_store_root, RetentionRule(
            s.images.max_age_days, s.images.min_free_ratio))
        store = ResultStore(engine, live, producer, s.kafka, ImageStore(s.image_store_root, self.det.max_pixels),
                            self.worker_id,
                            on_retry=lambda sink, _e: telemetry.STORE_RETRIES.labels(sink=sink).inc(),
                            redis=s.redis, retention=retention)
        router = ProductRouter(engine, s.products)
        # Without the changeover history a changed-over camera's frames would be scored by the settings' product's
        # model and recorded as that product: no frame is consumed before it has been read once.
        while not router.refresh() and not self.stop_event.wait(1.0):
            pass
        rebuilder = LiveRebuilder(engine, live, self.worker_id, s.redis.settle_s, s.redis.rebuild_window_s)
        pipeline = self.pipeline = Pipeline(self.models, router, self.det, self.worker_id,
                                            store, self._threads, self.stop_event)
        consumer = FrameConsumer(make_consumer(s.kafka, self.det.group_id), self.offsets,
                                 lambda: self._record_stored(pipeline.take_stored(block=False)))
        consumer.join(s.kafka.frames_topic)
        # The heartbeat reads the offsets tracker's snapshot, never the consumer (not thread-safe).
        heartbeat = threading.Thread(target=send_heartbeats, name="heartbeat", daemon=True, args=(
            live, self.worker_id,
            lambda: {**worker_status(self.models, pipeline.throughput, self.offsets.snapshot, self.started_at),
                     "image_store": retention.status(),
                     **progress(self.offsets.snapshot, self.loop_at).heartbeat_fields(self.det.stall_after_s),
                     "stalled": self.stalled(), "waiting_on": self.waiting_on()},
            self.stop_event))
        live_state = threading.Thread(target=keep_live_state, name="live-state", daemon=True,
                                      args=(store.live, rebuilder, self.stop_event))
        changeovers = threading.Thread(target=router.keep_fresh, name="changeovers", daemon=True,
                                       args=(self.stop_event,))
        images = threading.Thread(target=keep_image_store, name="image-retention", daemon=True,
                                  args=(retention, self.stop_event, s.images.check_s))
        pipeline.start()
        heartbeat.start()
        live_state.start()
        images.start()
        changeovers.start()
        log.info("worker %s consuming %s in group %s with models %s", self.worker_id, s.kafka.frames_topic,
                 self.det.group_id, {p: v["model_version"] for p, v in self.models.status().items()})
        try:
            self._consume(consumer, pipeline)
        finally:
            self.stop_event.set()
            self.threads_ended = pipeline.close()
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
        log.info("worker %s stopped cleanly after %d inspections (%d frames scored)", self.worker_id,
                 pipeline.throughput.inspected, pipeline.scored_frames,
                 extra={"inspected": pipeline.throughput.inspected, "scored_frames": pipeline.scored_frames})
        return 0

    def _consume(self, consumer: FrameConsumer, pipeline: Pipeline) -> None:
        """Poll, batch and submit until stopped; then drain what is in flight (main thread)."""
        collector: BatchCollector[RawFrame] = BatchCollector(self.det.max_batch, self.det.max_wait_ms)
        while not self.stop_event.is_set():
            self.loop_at = time.monotonic()
            self._commit_stored(consumer, pipeline, block=False)
            full = self.offsets.pending >= MAX_PENDING_BATCHES
            collector.max_batch = self._batch_size(pipeline)
            if full or not collector.room:
                # Poll anyway, with the partitions paused: a member that stops polling for
                # max_poll_interval_ms is made to leave the group, and its frames in flight are read again.
                consumer.hold(HOLD_POLL_MS)
                self._commit_stored(consumer, pipeline, block=True, timeout=HOLD_WAIT_S)
            else:
                collector.add(consumer.poll(collector.wait_ms(), collector.room))
            # With at most one batch ahead (being decoded or scored), the open batch goes at once: its
            # decoding overlaps the model's work on the one before. With more ahead it grows meanwhile.
            if not full and collector.ready(idle=pipeline.ahead <= 1):
                # After a rebalance, frames fetched for partitions we lost are re-read by their new owner.
                consumer.observe_assignment()
                collector.drop(consumer.owns)
                if collector.items:
                    self._submit(pipeline, collector.take(collector.max_batch))
        # Frames not submitted yet were never scored: the partitions' next owner reads them (uncommitted).
        if collector.items:
            log.info("stopping: %d frame(s) not submitted are left to the next owner", len(collector.items))
        if self.failed is None:
            self._drain(consumer, pipeline, timeout_s=DRAIN_S)
        if self.offsets.pending:
            pipeline.abandon()

    def _batch_size(self, pipeline: Pipeline) -> int:
        """The most frames a batch may hold now: ``max_batch``, or fewer when the measured scoring time per
        frame says that many would take longer than the batch time budget."""
        per_frame = pipeline.seconds_per_frame
        if not per_frame:
            return self.det.max_batch
        return max(1, min(self.det.max_batch, int(self.batch_budget_s / per_frame)))

    def _submit(self, pipeline: Pipeline, frames: list[RawFrame]) -> None:
        batch_id = self.offsets.submit(next_offsets((f.topic, f.partition, f.offset) for f in frames))
        pipeline.submit(RawBatch(batch_id, frames))

    def _record_stored(self, stored: list[int]) -> None:
        for batch_id in stored:
            self.offsets.stored(batch_id)

    def _commit_stored(self, consumer: FrameConsumer, pipeline: Pipeline, block: bool, timeout: float = 0.0
                       ) -> None:
        """Record the batches the store stage has finished, and commit what that allows."""
        stored = pipeline.take_stored(block, timeout)
        self._record_stored(stored)
        if stored or consumer.retry_due():
            consumer.commit_stored()

    def _drain(self, consumer: FrameConsumer, pipeline: Pipeline, timeout_s: float) -> None:
        """Wait until every submitted batch is stored and committed, at most ``timeout_s``, polling with the
        partitions paused meanwhile (the member stays in the group, so its commits are accepted)."""
        deadline = time.monotonic() + timeout_s
        while (self.offsets.pending > 0 or consumer.retry_due(0.0)) and time.monotonic() < deadline \
                and self.failed is None:
            self.loop_at = time.monotonic()
            consumer.hold(HOLD_POLL_MS)
            self._commit_stored(consumer, pipeline, block=True, timeout=0.1)
        if self.offsets.pending:
            log.warning("%d batch(es) not stored in time; their frames stay uncommitted", self.offsets.pending)
