"""The review queue: which kept frames need a person, in which order, and which operator has each one open.

A kept frame is queued when it still needs a label (no standing label, or a good label that waits for a second,
different operator: ``contracts.labels``) and a person's look is worth it:

* its normalised score (image score / threshold, 1.0 = the threshold) lies in the uncertain band
  ``dashboard.review_band`` (default [0.8, 1.25]), where the model is least sure; or
* it is one of the confident frames sampled for a check of the model's confident verdicts: one in
  ``dashboard.review_sample_every`` (default 20) by inspection id; or
* it waits for a second operator's good label.

Orders: ``oldest`` (capture time, oldest first) or ``uncertain`` (closest to the threshold first, by the ratio
distance max(s, 1/s), so 0.8 and 1.25 are equally far). An operator never sees a frame they labelled.

Claims (``review_claims``): the frames shown to an operator are claimed by them for ``dashboard.review_claim_s``
(renewed on each view); nobody else is offered a frame while its claim runs, and an operator's claimed frames
stay first, in their order, so the page does not move under a click. Claiming is one ``INSERT ... ON CONFLICT DO
UPDATE ... WHERE`` (the claim is taken only when free, expired or already this operator's): of two operators
opening the page at once, each gets different frames.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, case, delete, exists, func, literal, or_, select
from sqlalchemy.engine import Connection, Engine

from linewatch.contracts.labels import LABELS, awaiting_second_opinion_condition
from linewatch.contracts.schema import Inspection, Label, ReviewClaim
from linewatch.contracts.settings import Settings

Order = Literal["oldest", "uncertain"]
ORDERS: tuple[Order, ...] = ("oldest", "uncertain")
Kind = Literal["all", "good", "defect"]


@dataclass(frozen=True)
class QueueRule:
    """What needs a person: ``band`` = (low, high) normalised scores, one confident frame in ``sample_every``
    (0 = none), and the second-opinion factor (``trainer.second_opinion_above``; None = off)."""

    band: tuple[float, float]
    sample_every: int
    second_opinion_above: float | None

    @classmethod
    def from_settings(cls, s: Settings) -> QueueRule:
        return cls(tuple(s.dashboard.review_band), s.dashboard.review_sample_every, s.trainer.second_opinion_above)


def _conditions(rule: QueueRule, kind: Kind, operator: str | None, now: dt.datetime,
                product: str | None = None) -> list[Any]:
    standing = exists().where(Label.inspection_id == Inspection.id, Label.revoked_at.is_(None))
    waiting = awaiting_second_opinion_condition(rule.second_opinion_above)
    low, high = rule.band
    needs_person = [Inspection.normalized_score.between(low, high), waiting]
    if rule.sample_every > 0:
        needs_person.append(Inspection.id % rule.sample_every == 0)
    conditions = [Inspection.image_uri.is_not(None), or_(~standing, waiting), or_(*needs_person)]
    if kind in LABELS:
        conditions.append(Inspection.verdict == kind)
    if product is not None:
        conditions.append(Inspection.product == product)
    claimed = exists().where(ReviewClaim.inspection_id == Inspection.id, ReviewClaim.expires_at > now)
    if operator is None:
        conditions.append(~claimed)
    else:
        mine = exists().where(Label.inspection_id == Inspection.id, Label.operator == operator,
                              Label.revoked_at.is_(None))
        conditions += [~mine, ~claimed.where(ReviewClaim.operator != operator)]
    return conditions


def uncertainty() -> Any:
    """The ratio distance of the normalised score from the threshold, in SQL: max(s, 1/s) (1.0 at the
    threshold; 1e9 for a score of 0). :func:`sort_key` is the same in Python."""
    s = Inspection.normalized_score
    return case((s >= 1, s), (s > 0, literal(1.0) / s), else_=literal(1e9))


def sort_key(order: Order):
    """The key that puts ``Inspection`` rows in ``order`` (the SQL order of :func:`waiting`, less the claims)."""
    def distance(s: float) -> float:
        return s if s >= 1 else 1.0 / s if s > 0 else 1e9

    if order == "uncertain":
        return lambda r: (distance(r.normalized_score), r.captured_at, r.id)
    return lambda r: (r.captured_at, r.id)


def _ordered(query: Any, order: Order, operator: str | None, now: dt.datetime) -> Any:
    keys: list[Any] = []
    if operator is not None:  # the operator's open frames first: what they see stays where it is
        mine = exists().where(ReviewClaim.inspection_id == Inspection.id, ReviewClaim.operator == operator,
                              ReviewClaim.expires_at > now)
        keys.append(case((mine, 0), else_=1))
    if order == "uncertain":
        keys.append(uncertainty())
    elif order != "oldest":
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    return query.order_by(*keys, Inspection.captured_at, Inspection.id)


def waiting(db: Engine | Connection, rule: QueueRule, operator: str | None, kind: Kind = "all",
            order: Order = "oldest", limit: int = 24, now: dt.datetime | None = None,
            product: str | None = None) -> list[Inspection]:
    """Up to ``limit`` queued frames (``Inspection`` objects, detached) for ``operator`` (None: a viewer, who sees
    the frames nobody has open), in ``order``, of ``product`` only (None: every product's); claims nothing."""
    now = now or dt.datetime.now(dt.UTC)
    query = _ordered(select(*Inspection.__table__.columns).where(*_conditions(rule, kind, operator, now, product)),
                     order, operator, now).limit(limit)
    if isinstance(db, Connection):
        return [Inspection(**r._mapping) for r in db.execute(query)]
    with db.connect() as conn:
        return [Inspection(**r._mapping) for r in conn.execute(query)]


def waiting_count(db: Engine, rule: QueueRule, operator: str | None, kind: Kind = "all", cap: int = 100_000,
                  now: dt.datetime | None = None, product: str | None = None) -> int:
    """How many frames :func:`waiting` could offer ``operator`` (counted up to ``cap``)."""
    now = now or dt.datetime.now(dt.UTC)
    inner = select(Inspection.id).where(*_conditions(rule, kind, operator, now, product)).limit(cap).subquery()
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(inner)).scalar_one())


def claim(db: Engine, rule: QueueRule, operator: str, kind: Kind = "all", order: Order = "oldest",
          limit: int = 24, claim_s: float = 300.0, now: dt.datetime | None = None,
          product: str | None = None) -> list[Inspection]:
    """Open the next ``limit`` frames (of ``product`` only; None: every product's) for ``operator``: claim them
    until ``now + claim_s`` and return those this operator now holds, in ``order``. The frames the operator already
    holds stay on the page (new frames only fill the free places), and the page is shown in ``order``, so a frame
    taken back by undo is where it was.
    The operator's claims on other frames are released; expired claims are removed. A frame another operator
    claimed between the read and the write is left out (not returned).

    Raises:
        ValueError: an unknown ``order``. SQLAlchemyError: the database refused.
    """
    now = now or dt.datetime.now(dt.UTC)
    until = now + dt.timedelta(seconds=claim_s)
    with db.begin() as conn:
        rows = waiting(conn, rule, operator, kind, order, limit, now, product)
        held = _take(conn, [r.id for r in rows], operator, now, until)
        conn.execute(delete(ReviewClaim).where(or_(ReviewClaim.expires_at <= now, and_(
            ReviewClaim.operator == operator, ReviewClaim.inspection_id.not_in(held or [-1])))))
    return sorted((r for r in rows if r.id in held), key=sort_key(order))


def _take(conn: Connection, ids: list[int], operator: str, now: dt.datetime, until: dt.datetime) -> set[int]:
    if not ids:
        return set()
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    table = ReviewClaim.__table__
    stmt = insert(table).values([{"inspection_id": i, "operator": operator, "claimed_at": now, "expires_at": until}
                                 for i in ids])
    stmt = stmt.on_conflict_do_update(
        index_elements=["inspection_id"],
        set_={"operator": stmt.excluded.operator, "expires_at": stmt.excluded.expires_at,
              "claimed_at": case((table.c.operator == stmt.excluded.operator, table.c.claimed_at),
                                 else_=stmt.excluded.claimed_at)},
        where=or_(table.c.operator == stmt.excluded.operator, table.c.expires_at <= now),
    ).returning(table.c.inspection_id)
    return {int(i) for i in conn.execute(stmt).scalars()}


def release(db: Engine, operator: str) -> int:
    """Give back every frame ``operator`` has open (sign-out); returns how many claims were removed."""
    with db.begin() as conn:
        return conn.execute(delete(ReviewClaim).where(ReviewClaim.operator == operator)).rowcount
