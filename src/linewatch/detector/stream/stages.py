"""The worker's pipeline after the consumer: decode, inference and store, each a thread.

Stages are connected by queues of one batch, so the decoding, scoring and storing of consecutive batches
overlap while at most one batch waits between two stages. Batches go through in the order they were
submitted (each stage is one thread taking from one queue). A stored batch's id comes out of
:meth:`Pipeline.take_stored`; the main thread commits its offsets.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from linewatch.contracts.clock import ClockRule
from linewatch.contracts.settings import DetectorSettings

from ..drift import DriftMonitor
from . import telemetry
from .batches import DeadLetter, PreparedBatch, PreparedFrame, RawBatch, ScoredBatch
from .frames import prepare_batch, prepare_frame
from .image_store import keep_good_sample
from .inspection import score_batch
from .model_shelf import ModelShelf
from .result_store import ResultStore
from .routing import ProductRouter, Routed
from .throughput import Throughput

log = logging.getLogger(__name__)

_STOP = object()  # passed down the queues after the last batch: each stage forwards it and ends
_SMOOTHING = 0.3  # weight of the newest batch in the scoring time per frame (exponential moving average)


class Pipeline:
    """Decode, inference and store stages for one worker.

    Args:
        models: the models per product (the inference stage switches models between batches).
        router: routes each frame to its product's model (:mod:`.routing`), in the decode stage.
        det: the detector settings (``max_pixels``, ``good_sample_rate``).
        worker_id: the name written into results.
        store: writes a scored batch to every sink.
        threads: CPU threads for the model, (for a single frame, for a batch of several).
        stop: the worker's stop event; set here too when a stage crashes.
    """

    def __init__(self, models: ModelShelf, router: ProductRouter, det: DetectorSettings, worker_id: str,
                 store: ResultStore, threads: tuple[int, int], stop: threading.Event):
        self.models = models
        self.router = router
        self.det = det
        self.clock = ClockRule(det.clock_ahead_s, det.clock_behind_s)
        self.worker_id = worker_id
        self.store = store
        self.threads = threads
        self.stop_event = stop
        self.failed: BaseException | None = None
        self.throughput = Throughput()
        self.drift = DriftMonitor(det.drift)  # used by the inference thread only
        self._q_raw: queue.Queue = queue.Queue(maxsize=1)
        self._q_prepared: queue.Queue = queue.Queue(maxsize=1)
        self._q_scored: queue.Queue = queue.Queue(maxsize=1)
        self._q_stored: queue.Queue = queue.Queue()  # ids of stored batches, for the main thread
        self._submitted = 0  # batches handed to the decode stage (main thread)
        self._scored = 0  # batches the model has finished (inference thread)
        self.scored_frames = 0  # frames the model has scored, redeliveries included (inference thread)
        self.seconds_per_frame: float | None = None  # the model's time per frame lately (inference thread)
        self._abandon = threading.Event()  # set on a stop that cannot wait: batches not scored are skipped
        self._decode_pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="decode")
        self._threads = [threading.Thread(target=self._guard(f), name=n, daemon=True) for f, n in
                         ((self._decode_stage, "decode"), (self._inference_stage, "inference"),
                          (self._store_stage, "store"))]

    # ---- the main thread's side -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the three stage threads."""
        for t in self._threads:
            t.start()

    @property
    def ahead(self) -> int:
        """Batches submitted that the model has not finished yet (being decoded, or waiting, or scored)."""
        return self._submitted - self._scored

    def submit(self, batch: RawBatch) -> None:
        """Hand a batch to the decode stage; blocks while it is busy (gives up if a stage crashed)."""
        self._submitted += 1
        self._put(self._q_raw, batch)

    def take_stored(self, block: bool, timeout: float = 0.0) -> list[int]:
        """Ids of the batches stored since the last call, oldest first; waits up to ``timeout`` for the
        first one when ``block``, else returns at once (possibly empty)."""
        out = []
        while True:
            try:
                out.append(self._q_stored.get(block=block, timeout=timeout if block else None))
            except queue.Empty:
                return out
            block = False

    def abandon(self) -> None:
        """Skip the batches not scored or stored yet (they stay uncommitted; the next owner reads them);
        the batch being scored now still finishes, since a model call cannot be interrupted."""
        self._abandon.set()

    def close(self, join_s: float = 120.0) -> bool:
        """Let the stages finish what they hold and end; returns whether every stage thread ended.

        Each thread is waited for up to ``join_s``: a process must not exit while the inference thread is
        inside the model (the C++ runtime aborts the process), and a batch is sized to take a fraction of
        that (worker.BATCH_TIME_SHARE).
        """
        self._put(self._q_raw, _STOP)
        for t in self._threads:
            t.join(timeout=join_s)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.error("pipeline stage(s) %s still running after %.0f s", alive, join_s)
        return not alive

    def _put(self, q: queue.Queue, item: object) -> None:
        """``q.put(item)``, given up when a pipeline stage has crashed (it would never take the item)."""
        while self.failed is None:
            try:
                q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # ---- stages (each in its own thread) ----------------------------------------------------------------

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
            if self._abandon.is_set():
                continue
            frames, dead = self._prepare(batch.frames)
            for d in dead:
                log.warning("dead-lettering %s: %s (%s)", d.raw.source, d.reason, d.detail)
            self._q_prepared.put(PreparedBatch(batch.batch_id, frames, dead))

    def _prepare(self, raws: list) -> tuple[list[PreparedFrame], list[DeadLetter]]:
        """Route each frame to its product's model and decode it under that model's input geometry (frames of
        models with the same geometry and device are decoded together); frames keep their consumed order."""
        routed = self.router.route(raws, self.models)
        dead = [r for r in routed if isinstance(r, DeadLetter)]
        groups: dict[tuple, list[tuple[int, Routed]]] = {}
        for i, r in enumerate(routed):
            if isinstance(r, Routed):
                scorer = r.slot.current
                groups.setdefault((scorer.geometry, scorer.device), []).append((i, r))
        prepared: list[tuple[int, PreparedFrame]] = []
        for (geometry, device), members in groups.items():
            out = prepare_batch([r.raw for _, r in members], geometry, self.det.max_pixels, device, self._decode_pool)
            for (i, r), o in zip(members, out, strict=True):
                if isinstance(o, PreparedFrame):
                    o.product, o.slot = r.product, r.slot
                    prepared.append((i, o))
                else:
                    dead.append(o)
        return [f for _, f in sorted(prepared, key=lambda p: p[0])], dead

    def _inference_stage(self) -> None:
        while True:
            try:
                batch = self._q_prepared.get(timeout=0.5)
            except queue.Empty:
                self.models.switch_all()  # an idle line switches at once
                continue
            if batch is _STOP:
                self._q_scored.put(_STOP)
                return
            if self._abandon.is_set():
                continue
            self.models.switch_all()  # between two batches, so no batch is scored by two models
            started = time.perf_counter()
            scored = self._score(batch)
            if batch.frames:
                per_frame = (time.perf_counter() - started) / len(batch.frames)
                last = self.seconds_per_frame
                self.seconds_per_frame = per_frame if last is None else last + _SMOOTHING * (per_frame - last)
                self.scored_frames += len(batch.frames)
                telemetry.SCORED.inc(len(batch.frames))
            self._scored += 1
            self._q_scored.put(scored)

    def _score(self, batch: PreparedBatch) -> ScoredBatch:
        """One model call per product in the batch (a model batch never mixes products), joined in consumed order."""
        by_slot: dict[int, list[PreparedFrame]] = {}
        for f in batch.frames:
            by_slot.setdefault(id(f.slot), []).append(f)
        dead = list(batch.dead)
        parts = [self._score_one(frames[0].slot.current, frames, dead) for frames in by_slot.values()]
        order = {id(f.raw): i for i, f in enumerate(batch.frames)}  # a frame decoded again keeps its raw
        return ScoredBatch.join(parts, dead, batch.batch_id, order)

    def _score_one(self, scorer, frames: list[PreparedFrame], dead: list[DeadLetter]) -> ScoredBatch:
        """``frames`` (one product's) scored by ``scorer`` in one call; frames that no longer decode join ``dead``."""
        threads = self.threads[len(frames) > 1]
        if scorer.device.type == "cpu" and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        if any(f.model_input.plan.geometry != scorer.geometry for f in frames):  # a swap changed the geometry
            redo = [prepare_frame(f.raw, scorer.geometry, self.det.max_pixels) for f in frames]
            for old, new in zip(frames, redo, strict=True):
                if isinstance(new, PreparedFrame):
                    new.product, new.slot = old.product, old.slot
            frames = [f for f in redo if isinstance(f, PreparedFrame)]
            dead += [d for d in redo if isinstance(d, DeadLetter)]  # never dropped unnoticed
        scored = score_batch(scorer, frames, self.worker_id,
                             lambda m: keep_good_sample(m.camera_id, m.frame_id, self.det.good_sample_rate),
                             None, None, self.clock, self.drift)
        if frames:
            telemetry.INFERENCE_SECONDS.observe(scored.results[0].latency.inference_ms / 1000)
            telemetry.BATCH_SIZE.observe(len(frames))
        return scored

    def _store_stage(self) -> None:
        while True:
            batch = self._q_scored.get()
            if batch is _STOP:
                return
            if self._abandon.is_set():
                continue
            if not self.store.store(batch, self.stop_event):
                continue  # stopped while a sink was down: the batch stays uncommitted, and so do later ones
            for r in batch.results:
                telemetry.INSPECTED.labels(verdict=r.verdict).inc()
                telemetry.LATENCY_SECONDS.observe(r.latency.total_ms / 1000)
                telemetry.CLOCK_SKEW.labels(camera_id=r.frame.camera_id).set(r.latency.clock_skew_ms / 1000)
                if not self.clock.trusted(r.latency.clock_skew_ms):
                    telemetry.CLOCK_UNTRUSTED.labels(camera_id=r.frame.camera_id).inc()
            for camera_id, state in batch.drift.items():
                telemetry.CAMERA_DRIFT.labels(camera_id=camera_id).set(int(state["drifting"]))
                telemetry.CAMERA_DRIFT_Z.labels(camera_id=camera_id).set(abs(state["worst_z"]))
            for d in batch.dead:
                telemetry.DEAD_LETTERED.labels(reason=d.reason).inc()
            self.throughput.add(len(batch.results), len(batch.dead))
            self._q_stored.put(batch.batch_id)
