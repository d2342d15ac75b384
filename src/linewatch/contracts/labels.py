"""Queries over operator labels: the effective label of each inspection and the confirmed-good frames the
trainer may learn from."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from .schema import Inspection, Label


def effective_labels() -> Any:
    """A subquery of each inspection's effective label: its newest label that was not undone.

    Columns: ``inspection_id``, ``label`` (good | defect), ``operator``, ``created_at``.
    """
    ranked = (
        select(Label.inspection_id, Label.label, Label.operator, Label.created_at,
               func.row_number().over(partition_by=Label.inspection_id,
                                      order_by=(Label.created_at.desc(), Label.id.desc())).label("rank"))
        .where(Label.revoked_at.is_(None))
        .subquery()
    )
    return select(ranked.c.inspection_id, ranked.c.label, ranked.c.operator, ranked.c.created_at).where(
        ranked.c.rank == 1).subquery()


def confirmed_good_frames(conn: Connection, since: dt.datetime | None = None) -> list[Any]:
    """Kept frames whose effective label is ``good`` (operator-confirmed), oldest first: the frames the
    trainer may learn from. A frame whose effective label is ``defect`` is never among them.

    Rows: ``Inspection`` columns ``id``, ``camera_id``, ``frame_id``, ``image_uri``, plus the label's
    ``operator`` and ``labelled_at``. ``since``: only labels made after this moment.
    """
    eff = effective_labels()
    query = (
        select(Inspection.id, Inspection.camera_id, Inspection.frame_id, Inspection.image_uri,
               eff.c.operator, eff.c.created_at.label("labelled_at"))
        .join(eff, eff.c.inspection_id == Inspection.id)
        .where(eff.c.label == "good", Inspection.image_uri.is_not(None))
        .order_by(eff.c.created_at, Inspection.id)
    )
    if since is not None:
        query = query.where(eff.c.created_at > since)
    return list(conn.execute(query).all())


def count_confirmed_good_frames(conn: Connection, since: dt.datetime | None = None) -> int:
    """How many frames :func:`confirmed_good_frames` would return (the frames ready for retraining)."""
    eff = effective_labels()
    query = (
        select(func.count())
        .select_from(Inspection)
        .join(eff, eff.c.inspection_id == Inspection.id)
        .where(eff.c.label == "good", Inspection.image_uri.is_not(None))
    )
    if since is not None:
        query = query.where(eff.c.created_at > since)
    return int(conn.execute(query).scalar_one())
