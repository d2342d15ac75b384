"""A consumed batch scored as one model call per product and joined again (detector/stream/batches.py:
ScoredBatch.join, take_out): every per-frame field stays aligned with its frame, in the consumed order."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from linewatch.detector.stream.batches import ScoredBatch


def _part(names: list[str], raws: dict, threshold: float, keep: set[int]) -> ScoredBatch:
    frames = [SimpleNamespace(raw=raws[n], name=n) for n in names]
    return ScoredBatch([f"result-{n}" for n in names], frames, [np.full((2, 2), ord(n[-1]), np.float32) for n in names],
                       [threshold] * len(names), [], None, keep, drift={"cam-1": {"part": names[0]}})


def test_parts_of_two_products_are_joined_in_the_consumed_order_with_every_field_aligned():
    consumed = ["a0", "b1", "a2", "b3", "a4"]  # one camera alternating products a and b by header
    raws = {n: object() for n in consumed}
    parts = [_part(["a0", "a2", "a4"], raws, 0.5, keep={2}), _part(["b1", "b3"], raws, 0.7, keep={0})]
    joined = ScoredBatch.join(parts, [], 7, {id(raws[n]): i for i, n in enumerate(consumed)})
    assert [f.name for f in joined.frames] == consumed
    assert joined.results == [f"result-{n}" for n in consumed]
    assert [int(m[0, 0]) for m in joined.maps] == [ord(n[-1]) for n in consumed]
    assert joined.pixel_thresholds == [0.5, 0.7, 0.5, 0.7, 0.5]
    assert joined.keep == {1, 4} and joined.batch_id == 7  # b1 and a4
    joined.new, joined.overlays = {0, 1, 4}, {1: b"o1", 4: b"o4"}
    joined.take_out({1: "refused"}, reason="unstorable")
    assert [f.name for f in joined.frames] == ["a0", "a2", "b3", "a4"]
    assert joined.results == ["result-a0", "result-a2", "result-b3", "result-a4"]
    assert joined.pixel_thresholds == [0.5, 0.5, 0.7, 0.5] and [int(m[0, 0]) for m in joined.maps] == [48, 50, 51, 52]
    assert (joined.keep, joined.new, joined.overlays) == ({3}, {0, 3}, {3: b"o4"})
    assert [(d.reason, d.detail) for d in joined.dead] == [("unstorable", "refused")]
