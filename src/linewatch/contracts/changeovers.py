"""Which product a camera shows, and since when: the changeover history (``camera_products``, migration 0007).

A frame's product is, in this order (docs/products.md): its ``product`` header; else the camera's changeover with
the latest ``since <= captured_at`` (the frame's own time, so a redelivered frame is routed the same way and a
changeover splits rows exactly at its recorded time); else ``[products] cameras`` in the settings; else
:data:`~.products.DEFAULT_PRODUCT`. One home for that rule: the workers route with it, the dashboard shows it.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from .messages import check_id
from .products import DEFAULT_PRODUCT, check_product
from .schema import CameraProduct


@dataclass(frozen=True)
class Changeover:
    """From ``since`` (UTC) on, ``camera_id`` shows ``product``; ``set_by`` recorded it."""

    camera_id: str
    since: dt.datetime
    product: str
    set_by: str


class ChangeoverError(ValueError):
    """A changeover that cannot be recorded: an invalid camera id or product name, a naive time, or a second
    changeover of the same camera at the same instant. The message says which."""


def record_changeover(engine: Engine, camera_id: str, product: str, set_by: str,
                      since: dt.datetime | None = None) -> Changeover:
    """Record that ``camera_id`` shows ``product`` from ``since`` (default: now, UTC) on; rows are never updated.

    A changeover may be recorded ahead of time (``since`` in the future): workers read the history at most
    ``products.changeover_refresh_s`` late, so one recorded at least that long before the first frame of the new
    product splits the rows exactly at ``since``.

    Raises:
        ChangeoverError: see the class.
    """
    try:
        check_id("camera_id", camera_id)
        check_product(product)
    except ValueError as exc:
        raise ChangeoverError(str(exc)) from None
    since = since or dt.datetime.now(dt.UTC)
    if since.tzinfo is None:
        raise ChangeoverError(f"changeover time {since.isoformat()} has no time zone (UTC expected)")
    row = Changeover(camera_id, since.astimezone(dt.UTC), product, set_by)
    try:
        with engine.begin() as conn:
            conn.execute(CameraProduct.__table__.insert().values(
                camera_id=row.camera_id, since=row.since, product=row.product, set_by=row.set_by))
    except IntegrityError:
        raise ChangeoverError(f"camera {camera_id!r} already has a changeover at {row.since.isoformat()}") from None
    return row


def changeovers(engine: Engine, camera_id: str | None = None) -> list[Changeover]:
    """The changeover history, oldest first (of one camera, or of all)."""
    query = select(CameraProduct).order_by(CameraProduct.camera_id, CameraProduct.since)
    if camera_id is not None:
        query = query.where(CameraProduct.camera_id == camera_id)
    with engine.connect() as conn:
        return [Changeover(r.camera_id, r.since, r.product, r.set_by) for r in conn.execute(query)]


class CameraProducts:
    """The product of a camera at a time, from a changeover history and the settings' fallback mapping.

    Args:
        history: changeovers, any order.
        fallback: ``[products] cameras``: camera id -> product, for a camera with no changeover in force.
    """

    def __init__(self, history: Iterable[Changeover] = (), fallback: Mapping[str, str] | None = None):
        self.fallback = dict(fallback or {})
        by_camera: dict[str, list[Changeover]] = {}
        for c in sorted(history, key=lambda c: (c.camera_id, c.since)):
            by_camera.setdefault(c.camera_id, []).append(c)
        self._times = {cam: [c.since for c in rows] for cam, rows in by_camera.items()}
        self._rows = by_camera

    def product_at(self, camera_id: str, at: dt.datetime, header: str | None = None) -> str:
        """The product of a frame of ``camera_id`` captured at ``at`` (UTC), ``header`` being its ``product`` header
        (the module docstring's order)."""
        if header:
            return header
        times = self._times.get(camera_id)
        if times:
            i = bisect.bisect_right(times, at)
            if i:
                return self._rows[camera_id][i - 1].product
        return self.fallback.get(camera_id, DEFAULT_PRODUCT)
