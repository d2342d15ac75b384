"""Models: where a person decides about models, those of the product chosen in the sidebar ("all": a table per
product; the actions need one product). Whether the registry, the models topic and the workers agree (with
"Re-announce" when they do not), the engineer's actions (activate, roll back, re-announce: :mod:`..model_actions`),
the promotion evidence of a version beside the model it was judged against (:mod:`..model_review`), the registered
versions with their metrics and thresholds, which ones workers run, and retraining: a "Retrain now" button (for a
named operator) and the training jobs' progress, with what the job trains on (confirmed goods found, used, held
out, and the frames left out with why)."""

from __future__ import annotations

from typing import Any

import redis
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from linewatch.contracts.schema import ModelVersion
from linewatch.trainer import job_queue as training_jobs

from .. import auth, data, model_actions, model_review, products, telemetry, views
from ..windows import fmt

MAX_METRICS = 40


def render() -> None:
    """The Models page, of the product chosen in the sidebar ("all": a table per product, actions after choosing
    one)."""
    s = data.settings()
    zone = s.dashboard.timezone
    product = products.selected()
    st.title("Models")
    in_use = _in_use(product)
    try:
        versions = data.model_versions(data.engine(), product=product)
    except SQLAlchemyError as exc:
        st.error(f"The model registry cannot be read: {views.explain(exc)}")
        versions = []
    if product is None:
        _every_product(versions, in_use, zone)
    else:
        _one_product(product, versions, in_use, zone)
    st.subheader("Models in use")
    if in_use is None:
        st.caption("Needs the live state (Redis).")
    elif not in_use:
        st.caption("No worker is running and no recent result names a model" +
                   ("." if product is None else f" of {products.label(product)}."))
    else:
        st.table([{"model": version, **info} for version, info in sorted(in_use.items())], hide_index=True)
    _retraining(product)


def _one_product(product: str, versions: list[ModelVersion], in_use, zone: str) -> None:
    """One product's models: its active version, the rollout check, the engineer's actions, the promotion evidence,
    the versions with their metrics and thresholds."""
    active = next((v for v in versions if v.status == "active"), None)
    if active is not None:
        st.success(f"Active model: **{active.version}** ({active.backbone}), activated "
                   f"{fmt(active.activated_at, zone)} by {active.activated_by or 'unknown'}")
    model_actions.rollout_check(product)
    st.subheader("Decide")
    model_actions.actions(versions, active)
    if not versions:
        st.info(f"No model version is registered yet. Versions of {product} are registered by the trainer service "
                "(and by `linewatch up`, `linewatch model register --product`); until then, this page shows the "
                "models the workers report.")
        return
    _evidence(versions, active)
    st.subheader("Versions")
    st.table([_summary(v, in_use, zone) for v in versions], hide_index=True)
    for v in versions:
        with st.expander(f"{v.version}: metrics, thresholds and notes", expanded=v is active):
            metrics = _flatten(v.metrics or {})
            thresholds = _flatten(v.thresholds or {})
            left, right = st.columns(2)
            with left:
                st.markdown("**Metrics**")
                if metrics:
                    st.table({"metric": list(metrics), "value": list(metrics.values())}, hide_index=True)
                else:
                    st.caption("No metrics recorded.")
            with right:
                st.markdown("**Thresholds**")
                if thresholds:
                    st.table({"threshold": list(thresholds), "value": list(thresholds.values())}, hide_index=True)
                st.caption(f"{len(v.manifest or [])} training images · files at {v.artifact_uri}")
            if v.notes:
                st.caption(v.notes)


def _every_product(versions: list[ModelVersion], in_use, zone: str) -> None:
    """Every product's versions, a table each under its active version; actions need one product chosen."""
    st.info("All products: choose one product in the sidebar to activate, roll back or re-announce its models.")
    if not versions:
        st.info("No model version is registered yet.")
    for product in sorted({v.product for v in versions}):
        mine = [v for v in versions if v.product == product]
        active = next((v for v in mine if v.status == "active"), None)
        with st.container(border=True, key=f"lw_models_of_{product}"):
            st.subheader(f"Product {product}")
            st.caption(f"Active: **{active.version}**, activated {fmt(active.activated_at, zone)}" if active
                       else "No active version: its frames go to the dead-letter topic (no_model).")
            st.table([_summary(v, in_use, zone) for v in mine], hide_index=True)


def _evidence(versions: list[ModelVersion], active: ModelVersion | None) -> None:
    """A version's promotion evidence beside the model it was judged against, its verdict (never green when a side
    of the evidence was empty) and both models' threshold evidence."""
    st.subheader("Promotion evidence")
    names = [v.version for v in versions]  # newest first
    newest = max(versions, key=lambda v: v.number)
    default = newest if active is None or newest.number > active.number else active
    chosen = st.selectbox("Version", names, index=names.index(default.version), key="lw_evidence_version")
    v = next(x for x in versions if x.version == chosen)
    judged = model_review.verdict(v.metrics)
    show = {"refused": st.error, "unchecked": st.warning, "passed": st.success, "none": st.info}[judged.state]
    with st.container(key=f"lw_verdict_{judged.state}"):
        show(judged.text)
    table = model_review.comparison(v.version, v.metrics, v.parent_version)
    if table:
        st.table(table, hide_index=True)
    parent = next((x for x in versions if x.version == v.parent_version), None)
    shown = [v] + ([parent] if parent is not None else []) + ([active] if active not in (None, v, parent) else [])
    st.markdown("**Threshold evidence** (held-out goods never trained on)")
    with st.container(key="lw_threshold_evidence"):
        st.table([{"version": x.version, **model_review.calibration(x.thresholds)} for x in shown], hide_index=True)


def _retraining(product: str | None) -> None:
    """Ask for a retraining (one job at a time: the trainer service runs it) and follow the jobs."""
    st.subheader("Retraining")
    s = data.settings()
    operator = auth.current_operator(s)
    # a job retrains one product (docs/products.md, step 7): "all" names none
    why_not = ("Needs a named operator (sidebar)." if operator is None else None if product is not None
               else "A retraining trains one product: choose it in the sidebar.")
    left, right = st.columns([1, 3])
    with left:
        from_scratch = st.checkbox("From scratch", help="train a new student instead of fine-tuning the active one")
        if st.button("Retrain now", type="primary", disabled=why_not is not None, help=why_not):
            try:
                job_id = training_jobs.request_job(data.engine(), "manual", requested_by=operator.name,
                                                   from_scratch=from_scratch, product=product)
                telemetry.RETRAIN_REQUESTS.inc()
                st.toast(f"Training job {job_id} queued for the trainer service")
            except SQLAlchemyError as exc:
                st.error(f"Could not queue the job: {views.explain(exc)}")
    with right:
        st.caption(f"The trainer also retrains by itself after {s.trainer.min_new_good} frames confirmed good. "
                   "Engineers activate and roll back above (or with `linewatch model activate` / `rollback`).")
    _jobs_table(product)


@st.fragment(run_every=5)
def _jobs_table(product: str | None) -> None:
    try:
        jobs = training_jobs.recent_jobs(data.engine(), limit=10, product=product)
    except SQLAlchemyError as exc:
        st.warning(f"Training jobs cannot be read: {views.explain(exc)}")
        return
    if not jobs:
        st.caption("No training job yet.")
        return
    zone = data.settings().dashboard.timezone
    _progress(jobs)
    st.table([{
        "job": j.id, "status": j.status, "stage": j.stage or "—", "trigger": j.trigger,
        "asked by": j.requested_by or "—",
        "epoch": f"{j.epoch}/{j.epochs}" if j.epoch is not None and j.epochs else "—",
        "loss": _number(j.loss), "time left": f"{j.eta_s:.0f} s" if j.eta_s and j.status == "running" else "—",
        "result": j.candidate_version or "—", "started": fmt(j.started_at, zone, seconds=False),
        "error": (j.error or "").splitlines()[0][:120] if j.error else "",
    } for j in jobs], hide_index=True)


def _progress(jobs: list) -> None:
    """A progress bar for the job queued or running (epochs done / epochs, time left), and why the newest job that
    ended failed, if it failed; ``jobs`` newest first."""
    job = next((j for j in jobs if j.status in ("running", "queued")), None)
    if job is not None and job.status == "running":
        known = job.epoch is not None and bool(job.epochs)
        epochs = f"epoch {job.epoch}/{job.epochs}" if known else "no epoch done yet"
        left = f", about {job.eta_s:.0f} s left" if job.eta_s else ""
        st.progress(min(1.0, max(0.0, job.epoch / job.epochs)) if known else 0.0,
                    text=f"Training job {job.id}: {job.stage or 'starting'}, {epochs}{left}")
    elif job is not None:
        st.progress(0.0, text=f"Training job {job.id}: queued, waiting for the trainer service")
    ended = next((j for j in jobs if j.status in ("succeeded", "failed")), None)
    if ended is not None and ended.status == "failed":
        reason = (ended.error or "no reason recorded").splitlines()[0]
        st.error(f"Training job {ended.id} failed: {reason}")
    shown = job if job is not None and job.training_set else next((j for j in jobs if j.training_set), None)
    if shown is not None:
        _training_set(shown)


SOURCES = {"confirmed": "confirmed good", "awaiting": "good, one operator", "base": "base image"}


def _training_set(job) -> None:
    """What ``job`` trains on (its ``training_set`` record, :meth:`linewatch.trainer.dataset.TrainingSet.summary`):
    the counts, and the frames left out with why in an expander."""
    t = job.training_set
    dropped = t.get("dropped") or []
    confirmed_dropped = sum(1 for d in dropped if d.get("source") == "confirmed")
    waiting = t.get("awaiting_second_opinion") or 0
    with st.container(key="lw_training_set"):
        st.markdown(f"**Training job {job.id} trains on** {t.get('base', 0)} base images and {t.get('used', 0)} of "
                    f"{t.get('confirmed_found', 0)} confirmed goods: {t.get('held_out', 0)} held out as promotion "
                    f"evidence, {confirmed_dropped} dropped"
                    + (f"; {waiting} more labelled good {'waits' if waiting == 1 else 'wait'} for a second operator"
                       if waiting else "") + ".")
        if dropped:
            kinds = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted((t.get("dropped_by_kind") or {}).items()))
            with st.expander(f"{len(dropped)} frames left out, and why ({kinds})"):
                st.table([{"frame": d.get("file"), "what": SOURCES.get(d.get("source"), d.get("source") or "—"),
                           "why": d.get("reason")} for d in dropped], hide_index=True)


def _in_use(product: str | None) -> dict[str, dict[str, str]] | None:
    """Model version (of ``product``; None: of every product) -> who runs it (live workers) and the threshold in its
    recent results; None without Redis."""
    reader = data.live()
    if reader is None:
        return None
    try:
        workers = reader.workers()
        recent = reader.recent(500)
    except redis.RedisError as exc:
        st.warning(views.explain(exc))
        return None
    out: dict[str, dict[str, str]] = {}
    for w in workers:
        for version in model_review.models_run(w):
            if product is not None and model_review.product_of(version) != product:
                continue
            entry = out.setdefault(version, {"workers": "", "image threshold": "—", "recent results": "0"})
            state = "" if w["alive"] else " (silent)"
            entry["workers"] = ", ".join(x for x in (entry["workers"], w["worker_id"] + state) if x)
    counts: dict[str, int] = {}
    for r in recent:
        if product is not None and r.product != product:
            continue
        counts[r.model_version] = counts.get(r.model_version, 0) + 1
        entry = out.setdefault(r.model_version, {"workers": "", "image threshold": "—", "recent results": "0"})
        entry["image threshold"] = f"{r.threshold:.5g}"
    for version, n in counts.items():
        out[version]["recent results"] = f"{n:,}"
    for entry in out.values():
        entry["workers"] = entry["workers"] or "none now"
    return out


def _summary(v: ModelVersion, in_use: dict[str, dict[str, str]] | None, zone: str) -> dict[str, str]:
    thresholds = v.thresholds or {}
    return {
        "version": v.version,
        "status": v.status + (" ✔" if v.status == "active" else ""),
        "backbone": v.backbone,
        "parent": v.parent_version or "—",
        "created": fmt(v.created_at, zone, seconds=False),
        "image threshold": _number(thresholds.get("image")),
        "pixel threshold": _number(thresholds.get("pixel")),
        "calibration": _calibration(thresholds),
        "activated": f"{fmt(v.activated_at, zone, seconds=False)} by {v.activated_by}" if v.activated_at else "—",
        "running on": (in_use or {}).get(v.version, {}).get("workers", "—"),
    }


def _calibration(thresholds: dict) -> str:
    """``calibrated`` or ``under-calibrated``, with the held-out good images behind the threshold ("—" for a model
    from before the evidence was recorded)."""
    c = thresholds.get("calibration")
    if not isinstance(c, dict):
        return "—"
    return f"{c.get('status')} ({c.get('held_out_goods')} held-out goods, {c.get('needed_held_out_goods')} needed)"


def _number(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, int | float) and not isinstance(value, bool) else "—"


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Numeric and short text leaves of nested metrics, as ``a.b.c`` -> formatted value (at most 40)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, bool) or (isinstance(value, str) and len(value) <= 80):
            out[name] = str(value)
        elif isinstance(value, int | float):
            out[name] = _number(value)
        if len(out) >= MAX_METRICS:
            break
    return dict(list(out.items())[:MAX_METRICS])
