"""Reduced-precision OpenVINO exports (opt-in): int8 quantisation with NNCF, and the recalibration of thresholds on
the precision that scores.

int8 (:func:`quantize_int8`): NNCF post-training quantisation (``nncf.quantize``, preset ``performance``:
symmetric int8 activations and weights) of the teacher's and the student's convolutions, its activation ranges
collected on the model's own training goods (``manifest`` role ``train``; the held-out goods stay unseen for the
recalibration). The scoring head, every operation from the stage maps' upsampling onwards (product of the stage
maps, Gaussian smoothing, maximum), stays float: quantised, the smoothing convolution alone turned image scores of
0.1 into 3e-8 on the 128-pixel bottle model. A global branch (:mod:`..global_branch`: pooling, Mahalanobis
distance, fusion) stays float too; the int8 teacher features it reads shift its distances, on which the global
threshold is recalibrated like the others.

Recalibration (:func:`recalibrate`): the held-out goods are scored whole at the reduced precision
(:func:`..scoring.frame_scores` with the export's forward) and at float32 (eager PyTorch), and the thresholds set
on the reduced-precision scores and maps by the training's own rule (:func:`..calibration.calibrate_thresholds`
through :func:`..global_fit.calibrate_model`, with the model's recorded targets), the global threshold too where the
model has a branch, so the fused image score is made and judged with thresholds all set at that precision.
``against_float32`` records what changed on those goods: the largest relative score shift and map shift, the verdict
flips against float32 with each precision at its own thresholds (0 on the held-out goods by the rule: both
thresholds are at least their highest score), and the goods the reduced precision would have rejected at the
float32 thresholds (what recalibration prevents).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..calibration import held_out_goods_needed
from ..global_branch import fuse_scores
from .onnx_export import ExportError
from .parity import readable_goods

INT8_CALIBRATION_IMAGES = 300  # NNCF's default subset size; a model's training goods are usually fewer


def quantize_int8(graph, scorer) -> tuple[Any, dict[str, Any]]:
    """``graph`` (an ``openvino.Model`` of the scoring graph) with its backbones' convolutions quantised to int8 by
    NNCF on the training goods of ``scorer``'s model (their model input windows, :meth:`..scoring.Scorer.windows`),
    and the record of how (``nncf``, ``preset``, ``calibration_images``, ``calibration_windows``, ``quantised``,
    ``float``).

    Raises:
        ExportError: NNCF is not installed, or none of the model's training goods is readable here.
    """
    try:
        import nncf
    except ImportError as exc:
        raise ExportError(f"int8 needs NNCF ({exc}); install linewatch[int8] (pip install nncf), or export "
                          "--precision fp32 or bf16") from None
    windows = [scorer.windows(rgb) for _, rgb in readable_goods(scorer.model.metadata, "train")]
    if not windows:
        raise ExportError(f"{scorer.model.path}: int8 calibrates on the model's training goods and none is readable "
                          "here (moved, or changed since training); export where the training images are")
    windows = windows[:INT8_CALIBRATION_IMAGES]
    head = _scoring_head(graph) | _branch_ops(graph)
    nncf.set_log_level(logging.WARNING)  # its INFO lines list every operation it leaves float
    quantised = nncf.quantize(graph, nncf.Dataset(windows), subset_size=len(windows),
                              preset=nncf.QuantizationPreset.PERFORMANCE,
                              ignored_scope=nncf.IgnoredScope(names=sorted(head), validate=False))
    return quantised, {"nncf": nncf.__version__, "preset": "performance", "calibration_images": len(windows),
                       "calibration_windows": int(sum(len(w) for w in windows)),
                       "quantised": "the teacher's and the student's convolutions (int8 weights and activations)",
                       "float": f"the scoring head: {len(head)} operations from the stage maps' upsampling onwards"}


def _scoring_head(graph) -> set[str]:
    """Friendly names of every operation downstream of the graph's Interpolate nodes (the stage maps' upsampling:
    product, smoothing, maximum), which must stay float."""
    head: set[str] = set()
    stack = [op for op in graph.get_ordered_ops() if op.get_type_name() == "Interpolate"]
    while stack:
        node = stack.pop()
        if node.get_friendly_name() in head:
            continue
        head.add(node.get_friendly_name())
        stack.extend(t.get_node() for out in node.outputs() for t in out.get_target_inputs())
    return head


def _branch_ops(graph) -> set[str]:
    """Friendly names of the operations only a global branch's output needs (pooling, Mahalanobis distance, fusion):
    the ancestors of the graph's other outputs that are not ancestors of its anomaly maps; none without a branch."""
    def ancestors(outputs) -> set[str]:
        seen: set[str] = set()
        stack = [o.get_node() for o in outputs]
        while stack:
            node = stack.pop()
            if node.get_friendly_name() not in seen:
                seen.add(node.get_friendly_name())
                stack.extend(v.get_node() for v in node.input_values())
        return seen

    outputs = list(graph.outputs)
    if len(outputs) < 3:
        return set()
    return ancestors([outputs[0], *outputs[2:]]) - ancestors([outputs[1]])


def recalibrate(scorer, forward) -> dict[str, Any]:
    """Thresholds of ``scorer``'s model recalibrated on its held-out goods scored by ``forward`` (an export
    runtime's uint8 (B, 3, S, S) -> (scores, maps)), and how those scores differ from float32.

    Returns ``{"thresholds": <model.json thresholds record>, "against_float32": {"held_out_goods",
    "max_score_shift", "max_map_shift", "verdict_flips", "rejected_at_float32_threshold", "float32_threshold"}}``;
    shifts are relative (``|s / r - 1|``; maps: per image ``max |m - r| / max r``), the largest over the goods.

    Raises:
        ExportError: none of the model's held-out goods is readable here.
    """
    from ..global_fit import calibrate_model
    from ..scoring import frame_scores

    meta = scorer.model.metadata
    frames = [scorer.prepare(rgb, path) for path, rgb in readable_goods(meta, "val")]
    if not frames:
        raise ExportError(f"{scorer.model.path}: a reduced precision recalibrates the thresholds on the model's "
                          "held-out goods and none is readable here; export where the training images are")
    stpm, device = scorer.model.stpm, scorer.device
    exact_scores, exact_maps = frame_scores(stpm, frames, device, "float32")[:2]  # fused at model.json's thresholds
    old = meta["thresholds"]
    target = float(old["target_false_reject_rate"])
    recorded = old.get("calibration", {}).get("needed_held_out_goods")
    thresholds, out = calibrate_model(stpm, frames, device, target, float(old["pixel_false_positive_rate"]),
                                      int(recorded or held_out_goods_needed(target, 0)), forward=forward)
    scores, maps = out.scores, out.maps  # fused at the recalibrated thresholds where there is a branch
    # the same scores fused as float32 fuses them (model.json's thresholds): what is compared with float32's
    at_float32 = scores if out.global_scores is None else fuse_scores(out.local_scores, out.global_scores,
                                                                        stpm.global_branch.scale)
    exact_verdicts, verdicts = exact_scores > float(old["image"]), scores > thresholds["image"]
    map_shift = max(float(np.max(np.abs(m.astype(np.float64) - r)) / max(float(np.max(np.abs(r))), 1e-30))
                    for m, r in zip(maps, exact_maps, strict=True))
    return {"thresholds": thresholds, "against_float32": {
        "held_out_goods": len(frames),
        "max_score_shift": float(np.max(np.abs(at_float32.astype(np.float64) / exact_scores - 1))),
        "max_map_shift": map_shift,
        "verdict_flips": int(np.sum(verdicts != exact_verdicts)),
        "rejected_at_float32_threshold": int(np.sum(at_float32 > float(old["image"]))),
        "float32_threshold": float(old["image"]),
    }}
