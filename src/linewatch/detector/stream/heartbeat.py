"""The worker's heartbeat: its status in Redis every few seconds, for the dashboard and ``linewatch up``."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from linewatch.contracts.live_state import LiveStateWriter

from .model_shelf import ModelShelf
from .offsets import Snapshot
from .throughput import Throughput

log = logging.getLogger(__name__)


def worker_status(models: ModelShelf, throughput: Throughput, ownership: Snapshot, started_at: float
                  ) -> dict[str, Any]:
    """The heartbeat's payload (the keys the dashboard's Live page and the test harness read).

    ``products``: per product, the model it scores with and its rollout fields (:meth:`.ModelShelf.status`); the
    top-level ``model_version``, ``device``, ``runtime`` and rollout fields are those of the default product's model
    (else of the one used last), as a single-product worker always reported them. Built only from values that are
    safe to read on any thread: ``ownership`` is the offsets tracker's snapshot, recorded by the main thread, because
    kafka-python's consumer must not be called from here.
    """
    slot = models.first()
    first = slot.status() if slot is not None else \
        {"model_version": None, "device": None, "runtime": None, "registry_version": None, "model_behind": None,
         "model_load_error": None}
    return {
        **first,  # model_version, device, runtime, registry_version, model_behind, model_load_error
        "products": models.status(), "frames_per_s": round(throughput.rate(), 2),
        "inspected": throughput.inspected, "dead_lettered": throughput.dead_lettered,
        "partitions": ownership.partition_names(), "lag": ownership.lag_by_name(),
        "host": socket.gethostname(), "pid": os.getpid(), "started_at": started_at,
    }


def send_heartbeats(live: LiveStateWriter, worker_id: str, status: Callable[[], dict[str, Any]],
                    stop: threading.Event, period_s: float = 2.0) -> None:
    """Write ``status()`` as this worker's heartbeat every ``period_s`` until ``stop`` is set (a thread's loop).

    A failed write is logged at debug level and retried at the next beat: a missed heartbeat is not worth
    stopping the worker for (Redis may be down; the store stage reports that).
    """
    while not stop.wait(period_s):
        try:
            live.heartbeat(worker_id, status())
        except Exception as exc:  # noqa: BLE001 -- see the docstring
            log.debug("heartbeat failed: %s", exc)
