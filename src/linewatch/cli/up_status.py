"""The figures ``linewatch up`` prints: this run's rows, latencies and the camera's counters."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import numpy as np
from sqlalchemy import select

from linewatch.contracts.schema import Inspection


def this_run(engine, started: dt.datetime) -> tuple[int, int, list[float]]:
    """Rows processed since ``started``: how many, how many defects, and their end-to-end latencies (ms) in order."""
    with engine.connect() as conn:
        rows = conn.execute(select(Inspection.verdict, Inspection.total_ms).where(Inspection.processed_at >= started)
                            .order_by(Inspection.id)).all()
    return len(rows), sum(r.verdict == "defect" for r in rows), [r.total_ms for r in rows]


def percentiles(values: list[float]) -> tuple[float | None, float | None]:
    """(p50, p99) in ms rounded to 0.1, or (None, None) without values (JSON has no NaN)."""
    if not values:
        return None, None
    p50, p99 = np.percentile(values, [50, 99])
    return round(float(p50), 1), round(float(p99), 1)


def ms(value: float | None) -> str:
    return "     - ms" if value is None else f"{value:6.0f} ms"


def last_json(camera: subprocess.Popen) -> dict:
    """The camera's counters: the JSON line it prints last (an empty dict when it printed none)."""
    if camera.poll() is None or camera.stdout is None:  # still running: reading would wait for it to end
        return {}
    out = camera.stdout.read().decode()
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


def run_summary(engine, started: dt.datetime, published: dict | None, dead: int | None, elapsed_s: float) -> dict:
    """The JSON summary's figures of this run: rows processed since ``started``, per product too."""
    with engine.connect() as conn:
        rows = conn.execute(select(Inspection.total_ms, Inspection.verdict, Inspection.model_version,
                                   Inspection.product).where(Inspection.processed_at >= started)).all()
    p50, p99 = percentiles([r.total_ms for r in rows])
    return {
        "published": (published or {}).get("published"),
        "inspected": len(rows),
        "defects": sum(r.verdict == "defect" for r in rows),
        "dead_lettered": dead,
        "latency_ms": {"p50": p50, "p99": p99},
        "frames_per_s": round(len(rows) / elapsed_s, 2) if elapsed_s else None,
        "model_versions": sorted({r.model_version for r in rows}),
        "inspected_per_product": {p: sum(r.product == p for r in rows) for p in sorted({r.product for r in rows})},
    }
