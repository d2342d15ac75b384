"""What the Models page says about a model decision, as plain data (no Streamlit, no I/O): the promotion evidence
side by side, the verdict on it, and whether the registry, the models topic and the workers agree.

The evidence is what the trainer recorded in the candidate's registry metrics (:mod:`linewatch.trainer.promotion`:
``evidence``, ``review_set``, ``active_on_review_set``, ``decision``) and the calibration evidence in each version's
thresholds (:mod:`linewatch.detector.calibration`); nothing is recomputed here.

Rollout (:func:`disagreements`): SQL (table ``models``) is the record of the active version, the models topic is
the signal the workers follow, each worker's heartbeat says which version it scores with (``model_version``), which
one it last heard announced (``registry_version``) and whether it is behind (``model_behind``, with
``model_load_error``). A normal rollout takes seconds (the watcher polls the topic every second, loading a model a
few seconds, a heartbeat every 2 s; a failed load is retried after at most 30 s), so nothing is reported during
:data:`ROLLOUT_WINDOW_S` after the activation; after it, every disagreement is.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from linewatch.contracts.products import DEFAULT_PRODUCT, ProductError, parse_version

# Seconds after an activation during which workers may still be switching (see the module docstring).
ROLLOUT_WINDOW_S = 60.0
UNKNOWN = object()  # the models topic could not be read: no claim about it


@dataclass(frozen=True)
class Verdict:
    """The promotion review of one version: ``state`` is ``refused`` (the rule refused it), ``unchecked`` (a side
    of the evidence was empty, so "not worse" cannot be said), ``passed`` (evidence on both sides, the rule
    passed) or ``none`` (no review recorded: registered by hand or before reviews existed); ``text`` says why."""

    state: Literal["refused", "unchecked", "passed", "none"]
    text: str


def verdict(metrics: dict | None) -> Verdict:
    """The verdict on a version's recorded promotion review (its registry ``metrics``)."""
    metrics = metrics or {}
    review = metrics.get("review_set")
    if not isinstance(review, dict):
        return Verdict("none", "No promotion review recorded (registered by hand, or before reviews were recorded): "
                               "nothing was checked against labelled frames.")
    decision = str(metrics.get("decision") or "")
    unchecked = []
    if not review.get("defect"):
        unchecked.append("misses could not be checked: the review set holds 0 labelled defects")
    if not review.get("good"):
        unchecked.append("false rejects could not be checked: the review set holds 0 labelled goods")
    counts = f"{review.get('good', 0)} labelled goods and {review.get('defect', 0)} labelled defects"
    if decision.startswith("not activated"):
        return Verdict("refused", f"Refused by the promotion rule on {counts}: {decision}")
    if unchecked:
        return Verdict("unchecked", f"Not checked on {counts}: {'; '.join(unchecked)}. Whether it is worse than "
                                    "the active model cannot be told from this evidence.")
    return Verdict("passed", f"Promotion rule passed on {counts}: {decision}")


def _rate(count: Any, total: Any, what: str) -> str:
    if not total:
        return f"not checked (0 {what})"
    return f"{count} of {total} ({count / total:.1%})"


def _num(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, int | float) and not isinstance(value, bool) else "—"


def comparison(candidate: str, metrics: dict | None, reference: str | None) -> list[dict[str, str]]:
    """The side-by-side table of a review: one row per figure, a column for ``candidate`` and one for
    ``reference`` (the model it was judged against on the same frames, its parent; "—" where there was none),
    each at its own threshold. Empty without a recorded review."""
    metrics = metrics or {}
    cand, ref = metrics.get("review_set"), metrics.get("active_on_review_set")
    if not isinstance(cand, dict):
        return []
    ev = metrics.get("evidence") or {}
    ref_name = f"{reference} (active then)" if reference else "active then"
    rows = [
        ("labelled goods (never trained on)", cand.get("good"), ref.get("good") if ref else None),
        ("labelled defects", f"{cand.get('defect')} ({ev.get('confirmed_defects', '?')} confirmed by operators, "
                             f"{ev.get('reference_defects', '?')} reference images)",
         ref.get("defect") if ref else None),
        ("false rejects on labelled goods", _rate(cand.get("false_rejects"), cand.get("good"), "goods"),
         _rate(ref.get("false_rejects"), ref.get("good"), "goods") if ref else None),
        ("misses on labelled defects", _rate(cand.get("misses"), cand.get("defect"), "defects"),
         _rate(ref.get("misses"), ref.get("defect"), "defects") if ref else None),
        ("image AUROC", _num(cand.get("image_auroc")) if cand.get("image_auroc") is not None else
         "not measurable (one class only)", _num(ref.get("image_auroc")) if ref else None),
        ("image threshold", _num(cand.get("threshold")), _num(ref.get("threshold")) if ref else None),
        ("left out as its own training frames", ev.get("excluded_as_training_frames"), None),
    ]
    return [{"figure": name, candidate: "—" if c is None else str(c), ref_name: "—" if r is None else str(r)}
            for name, c, r in rows]


def calibration(thresholds: dict | None) -> dict[str, str]:
    """A version's threshold evidence: held-out goods (and how many the target needs), the false-reject target,
    the false rejects among the held-out goods with their Clopper-Pearson 95% interval, and the status
    (``calibrated`` / ``UNDER-CALIBRATED``); all "—" for a model from before the evidence was recorded."""
    c = (thresholds or {}).get("calibration")
    if not isinstance(c, dict):
        return dict.fromkeys(("held-out goods", "false-reject target", "held-out false rejects (95% CI)",
                              "calibration"), "—")
    ci = c.get("false_reject_rate_ci") or [None, None]
    status = str(c.get("status"))
    return {
        "held-out goods": f"{c.get('held_out_goods')} ({c.get('needed_held_out_goods')} needed)",
        "false-reject target": f"{c.get('target_false_reject_rate', 0):.2%}"
        if isinstance(c.get("target_false_reject_rate"), int | float) else "—",
        "held-out false rejects (95% CI)": f"{c.get('false_rejects')} (rate {_pct(ci[0])} – {_pct(ci[1])})",
        "calibration": "UNDER-CALIBRATED: too few held-out goods for the target" if status == "under-calibrated"
        else status,
    }


def _pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else "?"


def unix_time(t: dt.datetime | None) -> float | None:
    """Unix seconds of a time column (a naive value, as SQLite returns it, is UTC); None stays None."""
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


TOPIC_SUBJECT = "models topic"  # a disagreement's subject when the topic, not a worker, names another version


@dataclass(frozen=True)
class Disagreement:
    """One way the line does not run the registry's active version: ``subject`` (``models topic`` or a worker
    id), ``text`` (an operator's sentence) and ``reannounce_fixes`` (whether announcing the active version again
    is the remedy: the announcement is missing, not the model files)."""

    subject: str
    text: str
    reannounce_fixes: bool


ROLLOUT_FIELDS = ("model_version", "registry_version", "model_behind", "model_load_error")


def worker_view(heartbeat: dict, product: str = DEFAULT_PRODUCT) -> dict | None:
    """What a worker's heartbeat says of ``product``'s model: a dict of :data:`ROLLOUT_FIELDS`, or None when it says
    nothing of that product.

    Two shapes are read: a heartbeat with a ``products`` map (product -> those fields; a worker holding several
    products' models) gives that product's entry (None when absent: the worker has not met the product); a heartbeat
    with the fields at its top level (a worker of one model) speaks of the product its version names
    (``bottle/v3``: ``bottle``; ``v3``, or a name that is no registry version: the default product).
    """
    per_product = heartbeat.get("products")
    if isinstance(per_product, dict):
        entry = per_product.get(product)
        return {f: entry.get(f) for f in ROLLOUT_FIELDS} if isinstance(entry, dict) else None
    own = product_of(heartbeat.get("model_version") or heartbeat.get("registry_version"))
    return {f: heartbeat.get(f) for f in ROLLOUT_FIELDS} if own == product else None


def models_run(heartbeat: dict) -> list[str]:
    """The model versions a worker's heartbeat says it scores with (both shapes of :func:`worker_view`)."""
    per_product = heartbeat.get("products")
    if isinstance(per_product, dict):
        return [str(e["model_version"]) for e in per_product.values() if isinstance(e, dict) and e.get("model_version")]
    return [str(heartbeat["model_version"])] if heartbeat.get("model_version") else []


def compared_workers(workers: list[dict], product: str) -> list[tuple[dict, dict]]:
    """The live workers (heartbeats with ``alive``) that say something of ``product``'s model, each with what
    (:func:`worker_view`): the ones :func:`disagreements` compares."""
    views = [(w, worker_view(w, product)) for w in workers if w.get("alive")]
    return [(w, view) for w, view in views if view is not None]


def disagreements(active: str | None, activated_at: float | None, announced: Any, workers: list[dict],
                  now: float, window_s: float = ROLLOUT_WINDOW_S) -> list[Disagreement]:
    """Where the registry's ``active`` version of a product (activated at ``activated_at``, Unix s) is not what the
    models topic announces for that product (``announced``: its version, None for no announcement,
    :data:`UNKNOWN` when it could not be read) or what the live workers (heartbeats with ``alive``) run for it
    (:func:`worker_view`: a worker that says nothing of the product is not compared); empty within ``window_s`` of
    the activation. The product is the one ``active`` names."""
    if active is None or (activated_at is not None and now - activated_at <= window_s):
        return []
    product = product_of(active)
    out = []
    if announced is not UNKNOWN and announced != active:
        out.append(Disagreement(TOPIC_SUBJECT, f"Registry says {active} is active, but the models topic announces "
                                f"{announced or 'no model'}: the announcement failed, and workers follow the topic.",
                                True))
    for w, view in compared_workers(workers, product):
        wid, heard = str(w.get("worker_id")), view["registry_version"]
        on = view["model_version"] or "no model yet"
        if heard is None:
            if on != active:
                out.append(Disagreement(wid, f"Registry says {active}, worker {wid} runs {on} and does not follow "
                                             "the registry (started without the models topic).", False))
        elif heard != active:
            out.append(Disagreement(wid, f"Registry says {active}, worker {wid} runs {on}: the last announcement it "
                                         f"heard names {heard}.", True))
        elif view["model_behind"]:
            why = view["model_load_error"] or "it has not loaded it yet"
            out.append(Disagreement(wid, f"Registry says {active}, worker {wid} runs {on}: {why}. Announcing again "
                                         "does not help; the model's files must load.", False))
    return out


def product_of(version: object) -> str:
    """The product a version name belongs to (``bottle/v3``: ``bottle``); the default product for ``v3``, for None
    and for a name that is no registry version (a model run from a folder by hand)."""
    try:
        return parse_version(str(version))[0] if version else DEFAULT_PRODUCT
    except ProductError:
        return DEFAULT_PRODUCT
