"""Micro-batching: a batch closes when it is full, when its first frame has waited long enough, or at once
when the stages after it can take it (so a batch grows only while they are busy)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchCollector(Generic[T]):
    """Collects items into batches of at most ``max_batch``, closing a batch ``max_wait_ms`` after its
    first item arrived even if it is not full (bounding the latency a quiet line adds).

    Callers that know whether the stages after them can take a batch now pass ``idle`` to :meth:`ready`
    (the worker: at most one batch is being decoded or scored, so the new one's decoding overlaps the
    model's work on it): the open batch then goes at once, since waiting for more frames would only add
    their wait to every frame's latency. Under load the stages are busy, frames accumulate meanwhile, and
    batches grow toward ``max_batch``.
    """

    def __init__(self, max_batch: int, max_wait_ms: float, clock: Callable[[], float] = time.monotonic):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.clock = clock
        self.items: list[T] = []
        self.first_at: float | None = None

    def add(self, items: Iterable[T]) -> None:
        for item in items:
            if not self.items:
                self.first_at = self.clock()
            self.items.append(item)

    @property
    def room(self) -> int:
        """How many more items fit in the open batch."""
        return max(0, self.max_batch - len(self.items))

    def ready(self, idle: bool = False) -> bool:
        """Whether the open batch should close now; ``idle``: the stages after it can take it now."""
        if len(self.items) >= self.max_batch:
            return True
        if not self.items:
            return False
        return idle or self.clock() - (self.first_at or 0.0) >= self.max_wait_s

    def wait_ms(self, idle_ms: int = 200) -> int:
        """How long the next poll may block: until the open batch is due, or ``idle_ms`` when empty."""
        if not self.items:
            return idle_ms
        return max(0, int((self.first_at + self.max_wait_s - self.clock()) * 1000))  # type: ignore[operator]

    def take(self, max_items: int | None = None) -> list[T]:
        """Remove and return the open batch (at most ``max_items`` of it, the oldest first)."""
        n = len(self.items) if max_items is None else max_items
        out, self.items = self.items[:n], self.items[n:]
        self.first_at = self.clock() if self.items else None
        return out

    def drop(self, keep: Callable[[T], bool]) -> int:
        """Forget items for which ``keep`` is false (e.g. of revoked partitions); returns how many."""
        before = len(self.items)
        self.items = [i for i in self.items if keep(i)]
        if not self.items:
            self.first_at = None
        return before - len(self.items)
