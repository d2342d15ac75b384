"""Queries over operator labels: the effective label of each inspection and the confirmed-good frames the
trainer may learn from.

The second-opinion rule lives here, so that the trainer, its trigger and the dashboard agree: a frame the model
scored more than ``trainer.second_opinion_above`` x its threshold (``inspections.normalized_score``, as scored
when inspected) is a confirmed good only once two *different* operators labelled it good, each label unrevoked
and newer than any unrevoked defect label of the frame. One operator clicking twice counts once. Frames whose
kept image is gone (``image_uri`` NULL) are never confirmed goods; dead-lettered frames have no inspection row,
so they can be neither labelled nor trained on.

Every label is written by :func:`record_labels`: one standing label per (inspection, operator), so a second
click is a no-op (field case c32) and the database refuses a duplicate however it arrives.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, distinct, exists, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased

from .database import insert_ignore_duplicates
from .schema import STANDING, Inspection, Label

SECOND_OPINION_OPERATORS = 2  # operators whose good labels a frame above the second-opinion factor needs
LABELS = ("good", "defect")
OPERATOR_MAX_CHARS = 128  # labels.operator


def record_labels(conn: Connection, inspection_ids: Iterable[int], label: str, operator: str,
                  now: dt.datetime) -> list[int]:
    """Store ``operator``'s ``label`` for each inspection, idempotently; returns the ids labelled by this call.

    An inspection already carrying the same standing (unrevoked) label of this operator is left alone: a double
    click, a retried bulk action or a second browser tab writes nothing. A standing label of this operator with
    the *other* value is a change of mind: it is revoked at ``now`` and the new one stored. The partial unique
    index ``uq_labels_standing`` (migration 0005) makes the database itself refuse a second standing row, and the
    insert is ``INSERT ... ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL alike, so concurrent writers never
    fail and never duplicate. All rows share ``now`` (one action for undo). Runs in the caller's transaction.

    Raises:
        ValueError: ``label`` not good/defect; ``operator`` empty or over 128 characters; ``now`` naive.
        sqlalchemy.exc.IntegrityError: an inspection id that does not exist.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, not {label!r}")
    if not operator or not operator.strip():
        raise ValueError("labels need a named operator")
    if len(operator) > OPERATOR_MAX_CHARS:
        raise ValueError(f"operator names have at most {OPERATOR_MAX_CHARS} characters")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    ids = [int(i) for i in dict.fromkeys(inspection_ids)]
    if not ids:
        return []
    conn.execute(update(Label).where(Label.inspection_id.in_(ids), Label.operator == operator,
                                     Label.revoked_at.is_(None), Label.label != label).values(revoked_at=now))
    rows = [{"inspection_id": i, "label": label, "operator": operator, "created_at": now, "revoked_at": None,
             "note": None} for i in ids]
    created = insert_ignore_duplicates(conn, Label.__table__, rows, ["inspection_id", "operator"], where=STANDING)
    return [i for i in ids if (i, operator) in created]


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


def _standing_good() -> list[Any]:
    """Conditions on ``Label`` rows: unrevoked good labels with no unrevoked defect label of the frame after them."""
    later = aliased(Label)
    overruled = exists().where(later.inspection_id == Label.inspection_id, later.label == "defect",
                               later.revoked_at.is_(None), later.created_at > Label.created_at)
    return [Label.label == "good", Label.revoked_at.is_(None), ~overruled]


def good_operators() -> Any:
    """A subquery: per inspection, how many different operators labelled it good since its last defect label.

    Columns: ``inspection_id``, ``operators`` (int >= 1); only unrevoked labels count, and a good label
    older than an unrevoked defect label of the same frame does not.
    """
    return (select(Label.inspection_id, func.count(distinct(Label.operator)).label("operators"))
            .where(*_standing_good())
            .group_by(Label.inspection_id).subquery())


def _good(second_opinion_above: float | None, confirmed: bool) -> tuple[Any, Any, list[Any]]:
    """(effective labels, good operators, conditions) of frames labelled good that are confirmed goods
    (``confirmed``) or wait for a second operator (not ``confirmed``)."""
    eff, ops = effective_labels(), good_operators()
    conditions = [eff.c.label == "good", Inspection.image_uri.is_not(None)]
    if second_opinion_above is None:
        if not confirmed:
            conditions.append(Inspection.id.is_(None))  # no frame waits when the rule is off
        return eff, ops, conditions
    operators = func.coalesce(ops.c.operators, 0)
    if confirmed:
        conditions.append(or_(Inspection.normalized_score <= second_opinion_above,
                              operators >= SECOND_OPINION_OPERATORS))
    else:
        conditions += [Inspection.normalized_score > second_opinion_above, operators < SECOND_OPINION_OPERATORS]
    return eff, ops, conditions


def _good_query(columns: list[Any], second_opinion_above: float | None, confirmed: bool,
                since: dt.datetime | None, product: str | None = None) -> Any:
    eff, ops, conditions = _good(second_opinion_above, confirmed)
    query = (select(*columns, eff.c.operator, eff.c.created_at.label("labelled_at"),
                    func.coalesce(ops.c.operators, 0).label("good_operators"))
             .join(eff, eff.c.inspection_id == Inspection.id)
             .outerjoin(ops, ops.c.inspection_id == Inspection.id)
             .where(*conditions))
    if since is not None:
        query = query.where(eff.c.created_at > since)
    if product is not None:
        query = query.where(Inspection.product == product)
    return query.order_by(eff.c.created_at, Inspection.id)


_FRAME_COLUMNS = (Inspection.id, Inspection.camera_id, Inspection.frame_id, Inspection.captured_at,
                  Inspection.normalized_score, Inspection.image_uri)


def confirmed_good_frames(conn: Connection, since: dt.datetime | None = None, *,
                          second_opinion_above: float | None, product: str | None = None) -> list[Any]:
    """Kept frames whose effective label is ``good`` and that pass the second-opinion rule (module docstring),
    oldest label first: the frames the trainer may learn from. A frame whose effective label is ``defect``
    is never among them.

    Args:
        since: only frames whose effective label was made after this moment.
        second_opinion_above: ``trainer.second_opinion_above``; None turns the rule off.
        product: only frames of this product (``inspections.product``); None: of every product.
    Rows: ``Inspection`` columns ``id``, ``camera_id``, ``frame_id``, ``captured_at``, ``normalized_score``,
    ``image_uri``, plus the label's ``operator``, ``labelled_at`` and ``good_operators`` (distinct operators).
    """
    return list(conn.execute(_good_query(list(_FRAME_COLUMNS), second_opinion_above, True, since, product)).all())


def count_confirmed_good_frames(conn: Connection, since: dt.datetime | None = None, *,
                                second_opinion_above: float | None, product: str | None = None) -> int:
    """How many frames :func:`confirmed_good_frames` would return (the frames ready for retraining)."""
    inner = _good_query([Inspection.id], second_opinion_above, True, since, product).subquery()
    return int(conn.execute(select(func.count()).select_from(inner)).scalar_one())


def awaiting_second_opinion(conn: Connection, *, second_opinion_above: float | None,
                            inspection_ids: list[int] | None = None, product: str | None = None) -> list[Any]:
    """Kept frames labelled good that still need a different operator's good label (module docstring).

    Rows as :func:`confirmed_good_frames`; ``operator`` is who labelled it good last. ``inspection_ids``:
    only these frames; ``product``: only this product's (None: every product's). Empty when
    ``second_opinion_above`` is None.
    """
    query = _good_query(list(_FRAME_COLUMNS), second_opinion_above, False, None, product)
    if inspection_ids is not None:
        query = query.where(Inspection.id.in_(inspection_ids))
    return list(conn.execute(query).all())


def awaiting_second_opinion_condition(second_opinion_above: float | None) -> Any:
    """A condition on ``Inspection`` rows: labelled good and still waiting for a second operator (for the
    review queue, which offers such frames again). Never true when ``second_opinion_above`` is None."""
    if second_opinion_above is None:
        return Inspection.id.is_(None)
    eff, ops = effective_labels(), good_operators()
    return and_(Inspection.image_uri.is_not(None), Inspection.normalized_score > second_opinion_above,
                Inspection.id.in_(select(eff.c.inspection_id).where(eff.c.label == "good")),
                Inspection.id.not_in(select(ops.c.inspection_id)
                                     .where(ops.c.operators >= SECOND_OPINION_OPERATORS)))


def good_operator_names(conn: Connection, inspection_ids: list[int]) -> dict[int, list[str]]:
    """Who labelled each frame good since its last defect label (unrevoked labels): id -> operator names."""
    rows = conn.execute(select(Label.inspection_id, Label.operator).distinct()
                        .where(Label.inspection_id.in_(inspection_ids), *_standing_good()))
    out: dict[int, list[str]] = {}
    for inspection_id, operator in rows:
        out.setdefault(inspection_id, []).append(operator)
    return out
