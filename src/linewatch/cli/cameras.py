"""``linewatch camera ...``: which product a camera shows (a changeover) and the changeover history.

A changeover is a row of ``camera_products`` written through :func:`linewatch.contracts.changeovers.record_changeover`
(the dashboard's Cameras page writes the same rows); the workers route each frame by the changeover in force at its
capture time (docs/products.md).
"""

from __future__ import annotations

import datetime as dt
import getpass
from typing import Annotated

import typer

from .errors import fail
from .options import load_settings

camera_app = typer.Typer(help="Which product each camera shows: record a changeover, show the history.",
                         no_args_is_help=True)


def open_record():
    """The engine of the configured SQL store, its schema brought up to date."""
    from linewatch.contracts.database import make_engine, migrate

    engine = make_engine(load_settings().database_url)
    migrate(engine)
    return engine


def os_user() -> str:
    """Who runs the command (``getpass.getuser``: LOGNAME, USER, ... then the password database), else ``cli``."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no such variable and a uid without a passwd entry (a bare container)
        return "cli"


def parse_utc(text: str) -> dt.datetime:
    """``text`` (ISO 8601 with a UTC offset: ``2026-12-01T18:00:00Z``, ``...+01:00``) as an aware UTC datetime.

    Raises:
        ValueError: not an ISO 8601 time, or one without an offset (it would be read in some unknown zone).
    """
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--at {text!r} is not an ISO 8601 time (e.g. 2026-12-01T18:00:00Z)") from None
    if moment.tzinfo is None:
        raise ValueError(f"--at {text!r} has no time zone: add Z for UTC (e.g. {moment.isoformat()}Z) or an offset")
    return moment.astimezone(dt.UTC)


@camera_app.command("product")
def camera_product(
    camera_id: Annotated[str, typer.Argument(metavar="CAM", help="the camera id (as `linewatch ingest` sends it)")],
    product: Annotated[str, typer.Argument(metavar="PRODUCT", help="the product it shows from then on")],
    at: Annotated[str | None, typer.Option("--at", help="from when on, ISO 8601 with Z or an offset (default: "
                                           "now); ahead of time is allowed")] = None,
    by: Annotated[str | None, typer.Option(help="who sets it (recorded; default: the OS user)")] = None,
) -> None:
    """Record a changeover: CAM shows PRODUCT from --at (default now) on. Frames carrying their own product header
    keep it; the others are routed by the changeover in force at their capture time."""
    from linewatch.contracts.changeovers import ChangeoverError, record_changeover
    from linewatch.contracts.messages import check_id
    from linewatch.contracts.products import check_product

    by = os_user() if by is None else by
    try:  # every argument checked before the record is opened: a bad one writes nothing
        check_id("camera_id", camera_id)
        check_product(product)
        since = parse_utc(at) if at is not None else None
        if not by.strip() or len(by) > 128:
            raise ValueError(f"--by {by!r}: who sets the changeover, 1 to 128 characters")
    except ValueError as exc:  # MessageError, ProductError
        fail(str(exc))
    engine = open_record()
    try:
        row = record_changeover(engine, camera_id, product, by, since)
    except ChangeoverError as exc:
        fail(str(exc))
    typer.echo(f"camera {row.camera_id} shows {row.product} from {row.since:%Y-%m-%d %H:%M:%S} UTC on "
               f"(set by {row.set_by})")
    if _active_version(engine, product) is None:
        typer.secho(f"note: {product} has no active model: its frames go to the dead-letter topic (no_model) until "
                    f"one is activated (`linewatch model activate {product}/vN`)", err=True, fg=typer.colors.YELLOW)


def _active_version(engine, product: str) -> str | None:
    from sqlalchemy import select

    from linewatch.contracts.schema import ModelVersion

    with engine.connect() as conn:
        return conn.execute(select(ModelVersion.version).where(ModelVersion.product == product,
                                                               ModelVersion.status == "active")).scalar()


@camera_app.command("history")
def camera_history(camera_id: Annotated[str | None, typer.Argument(metavar="[CAM]", help="one camera (default: "
                                                                   "all)")] = None) -> None:
    """The recorded changeovers, oldest first per camera: camera, since (UTC), product, who set it."""
    from linewatch.contracts.changeovers import changeovers

    rows = changeovers(open_record(), camera_id)
    if not rows:
        typer.echo("no changeover recorded" + (f" for camera {camera_id}" if camera_id else ""))
        return
    width = max(6, *(len(r.camera_id) for r in rows))
    pwidth = max(7, *(len(r.product) for r in rows))
    for r in rows:
        typer.echo(f"{r.camera_id:<{width}} {r.since.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC  "
                   f"{r.product:<{pwidth}} set by {r.set_by}")
