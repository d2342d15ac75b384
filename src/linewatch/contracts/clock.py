"""Which clock a worker trusts: the camera's ``captured_at`` is data, the worker's (or the broker's) is the time.

A camera whose clock is off must not skew the line's figures: live counts are bucketed by the worker's
processing time (:mod:`linewatch.contracts.live_state`), and latency is measured from the camera's capture time
only while that clock agrees with the frame's arrival. The *arrival* of a frame is the broker's append time when
the topic stamps records with ``LogAppendTime`` (Kafka ``message.timestamp.type``), else the moment the worker
polled it. The camera's *clock skew* is ``captured_at - arrival``: a little below zero on a healthy line (the
transit), above zero when the camera's clock runs ahead, far below when it runs behind (or the frame waited
long in the camera's buffer, which a worker cannot tell apart).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClockRule:
    """How far a camera's clock may disagree with a frame's arrival and still be trusted for latency.

    ``ahead_s``: a capture time later than the arrival by more than this is a clock running ahead (no frame
    arrives before it is taken). ``behind_s``: a capture time earlier than the arrival by more than this is
    taken as a clock running behind (or a frame buffered that long in the camera, counted the same way).
    """

    ahead_s: float = 2.0
    behind_s: float = 120.0

    def skew_ms(self, captured_ns: int, arrived_ns: int) -> float:
        """The camera's clock skew, ms: ``captured_at - arrival`` (positive: the camera runs ahead)."""
        return (captured_ns - arrived_ns) / 1e6

    def trusted(self, skew_ms: float) -> bool:
        """Whether a frame with this skew times latency from its capture time."""
        return -self.behind_s * 1000 <= skew_ms <= self.ahead_s * 1000

    def latency_origin_ns(self, captured_ns: int, arrived_ns: int) -> int:
        """Where a frame's latency starts, ns since the epoch: its capture time while the camera's clock is
        trusted (never later than its arrival, so latency is never negative), else its arrival."""
        if self.trusted(self.skew_ms(captured_ns, arrived_ns)):
            return min(captured_ns, arrived_ns)
        return arrived_ns


DEFAULT_CLOCK = ClockRule()
