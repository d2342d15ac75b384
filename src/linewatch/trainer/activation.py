"""An activation in SQL (one active version per product, also under activations at once: :func:`activate_in_sql`),
the announcement that keeps the models topic's last word SQL's when they overtake each other
(:func:`announce_if_overtaken`), and undoing an activation whose announcement failed, so that SQL (table ``models``)
never names an active version the workers were not told about.

:meth:`linewatch.trainer.registry.ModelRegistry.activate` records the activation in SQL, then announces it on the
models topic (retried: :func:`linewatch.trainer.rollout.announce_with_retries`). When every try fails, the workers
still run the version the topic last named, which is the one active before; :func:`revert_activation` puts SQL back
to that state and records why in the version's notes.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from linewatch.contracts import database
from linewatch.contracts.messages import ModelAnnouncement
from linewatch.contracts.schema import ModelVersion
from linewatch.contracts.settings import KafkaSettings

from .rollout import AnnounceRetry, announce

log = logging.getLogger(__name__)


class RegistryError(ValueError):
    """An unknown version, or a request the registry's state does not allow; the message says why."""


class AnnouncementError(RegistryError):
    """Announcing an activation failed on every try, and the activation was rolled back in SQL (``reverted``; False
    when another activation had come in between, or SQL could not be written); the message says why and which
    version is active now."""

    def __init__(self, message: str, reverted: bool):
        super().__init__(message)
        self.reverted = reverted


@dataclass(frozen=True)
class Before:
    """The registry as it was before an activation of ``version``: that version's status, ``activated_by`` and
    ``activated_at``, and the version active then (None: none was)."""

    version: str
    status: str
    activated_by: str | None
    activated_at: dt.datetime | None
    previous: str | None

    @property
    def active_again(self) -> str:
        """The version active once the activation is undone (words for a message)."""
        return self.version if self.status == "active" else self.previous or "no version"


def lock_product_of(s: Session, version: str) -> str | None:
    """Lock the rows of ``version``'s product for the rest of ``s``'s transaction, and return the product (None: no
    such version). A write that changes nothing: it locks the rows on PostgreSQL and takes SQLite's write lock
    (Python's sqlite3 runs the SELECTs before a transaction's first write outside it), so every reading that follows
    sees what an activation of the product committed before, and another one waits for this transaction. Every
    change of a product's active version starts with it, so two never lock its rows in different orders.

    The wait is bounded on both databases: ``LOCK_WAIT_S`` (SQLite's busy timeout; PostgreSQL's ``lock_timeout``
    for the rest of the transaction), so a transaction left open on the product's rows cannot hold an engineer's
    activation for ever.

    Raises:
        sqlalchemy.exc.OperationalError: the lock was held longer than that ('database is locked' on SQLite, 'lock
            timeout' on PostgreSQL); nothing is changed.
    """
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text(f"SET LOCAL lock_timeout = '{int(database.LOCK_WAIT_S * 1000)}ms'"))
    product = s.scalar(select(ModelVersion.product).where(ModelVersion.version == version))
    if product is not None:
        s.execute(update(ModelVersion).where(ModelVersion.product == product).values(status=ModelVersion.status))
    return product


def activate_in_sql(engine: Engine, version: str, by: str, notes: str | None,
                    now: dt.datetime) -> tuple[ModelVersion, Before]:
    """:meth:`.registry.ModelRegistry.activate`'s transaction (``version`` by ``by`` at ``now``, UTC-aware;
    ``notes`` added to the version's): the product's active version retired, ``version`` active. The product's rows
    are locked first (:func:`lock_product_of`), so two activations at once run one after the other: without it, each
    retired only what it had read as active, leaving two active versions, or none. Returns the version's row and
    the registry as it was before.

    Raises:
        RegistryError: no such version. IntegrityError: a write outside the registry made another version active
            meanwhile (one active version per product: migration 0008's index). OperationalError: the product's
            rows were locked longer than ``LOCK_WAIT_S`` (:func:`lock_product_of`). Nothing is changed by either.
    """
    with Session(engine, expire_on_commit=False) as s, s.begin():
        if lock_product_of(s, version) is None:
            raise RegistryError(f"no model version {version!r}")
        row = s.get(ModelVersion, version)
        others = (ModelVersion.status == "active", ModelVersion.product == row.product,
                  ModelVersion.version != version)  # the product's active version, the one retired here
        current = s.scalars(select(ModelVersion.version).where(*others)).first()
        before = Before(version, row.status, row.activated_by, row.activated_at, current)
        if row.status == "rejected":
            notes = f"override by {by}: activated although rejected by the promotion rule" + (
                f"; {notes}" if notes else "")
        s.execute(update(ModelVersion).where(*others).values(status="retired"))
        row.status, row.activated_by, row.activated_at = "active", by, now
        if notes:
            row.notes = f"{row.notes}\n{notes}" if row.notes else notes
    return row, before


def announce_if_overtaken(row: ModelVersion, active: Callable[[str], ModelVersion | None],
                           announce: Callable[[ModelVersion], None], rounds: int = 3) -> None:
    """After ``row``'s announcement: while another version of its product is active in SQL (``active(product)``:
    an activation that committed after this one; two at once commit one after the other but each announces after its
    own commit, so this announcement may have landed after the later one's), announce that version again
    (``announce``), and look again, up to ``rounds`` times, so that the topic's last word is SQL's. A failure to read
    or to announce is logged and ends it: the later activation announces, or rolls back and announces, itself."""
    announced = row.version
    for _ in range(rounds):
        try:
            latest = active(row.product)
        except Exception as exc:  # noqa: BLE001 -- SQLAlchemyError: the other activation's own announcement stands
            log.warning("reading %s's active version after announcing %s failed (%s: %s)", row.product, announced,
                        type(exc).__name__, exc)
            return
        if latest is None or latest.version == announced:
            return
        log.info("%s was activated after %s while it was announced: announcing %s again", latest.version,
                 announced, latest.version)
        try:
            announce(latest)
        except Exception as exc:  # noqa: BLE001 -- KafkaError: as above
            log.warning("announcing %s again failed (%s: %s)", latest.version, type(exc).__name__, exc)
            return
        announced = latest.version
    log.warning("%s's active version kept changing while it was announced (%d rounds): the Models page's rollout "
                "check shows whether the models topic names it", row.product, rounds)


def revert_activation(engine: Engine, before: Before, by: str, at: dt.datetime, reason: str) -> bool:
    """Undo the activation of ``before.version`` by ``by`` at ``at`` (its ``activated_at``, UTC-aware; one
    transaction): that version gets back its status and activation record, the previously active version is active
    again, and the version's notes say why (``reason``). Nothing is changed when another activation came in between
    (the version is no longer active, or was activated again since, by someone else or by ``by`` themselves, which
    only ``at`` tells apart): returns False then, True when reverted.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: SQL cannot be written (the caller reports both failures).
    """
    note = (f"activation by {by} rolled back at {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC: {reason}; "
            f"{before.active_again} is active again")
    with Session(engine) as s, s.begin():
        lock_product_of(s, before.version)  # in the order an activation locks them: no deadlock with one
        undone = s.execute(update(ModelVersion).where(ModelVersion.version == before.version,
                                                      ModelVersion.status == "active",
                                                      ModelVersion.activated_by == by,
                                                      ModelVersion.activated_at == at)
                           .values(status=before.status, activated_by=before.activated_by,
                                   activated_at=before.activated_at,
                                   notes=func.coalesce(ModelVersion.notes + "\n", "") + note))
        if undone.rowcount != 1:
            log.error("activation of %s not rolled back: another activation changed the registry since", before.version)
            return False
        if before.previous is not None:
            s.execute(update(ModelVersion).where(ModelVersion.version == before.previous,
                                                 ModelVersion.status == "retired").values(status="active"))
    log.error("activation of %s rolled back: %s; %s is active again", before.version, reason, before.active_again)
    return True


def undo_failed_activation(engine: Engine, before: Before, by: str, at: dt.datetime, exc: Exception,
                           retry: AnnounceRetry, kafka: KafkaSettings | None,
                           announcement: Callable[[ModelVersion], ModelAnnouncement]) -> NoReturn:
    """After the last announcing try of the activation by ``by`` at ``at`` failed with ``exc``: put SQL back as it
    was ``before`` (:func:`revert_activation`), announce the version active again once (the failed send may have
    reached the topic after all, its acknowledgement lost), and raise.

    Raises:
        AnnouncementError: always; ``reverted`` says whether SQL was put back.
    """
    topic = kafka.models_topic if kafka is not None else "the models topic"
    why = f"announcing {before.version} on {topic} failed after {retry.attempts} tries ({type(exc).__name__}: {exc})"
    if before.status != "active" and before.previous is None:
        # Nothing to go back to: SQL keeps the version active, so the Models page and the model_rollout alarm show
        # that the workers were not told until it is re-announced (with no active version they would show nothing).
        raise AnnouncementError(f"{why}; no version was active before, so {before.version} stays active in the "
                                "registry: re-announce it once the broker answers", False) from exc
    try:
        reverted = revert_activation(engine, before, by, at, why)
    except Exception as sql_exc:  # noqa: BLE001 -- both stores failing: say so; the rollout check shows the rest
        log.error("%s, and rolling the activation back failed too (%s)", why, sql_exc)
        raise AnnouncementError(f"{why}; rolling the activation back in SQL failed too ({sql_exc}): the registry "
                                f"says {before.version} is active, the workers were not told", False) from exc
    if not reverted:
        raise AnnouncementError(f"{why}; another activation came in between, so it was not rolled back",
                                False) from exc
    told = ""
    if before.previous is not None and kafka is not None:
        try:
            with Session(engine, expire_on_commit=False) as s:
                previous = s.get(ModelVersion, before.previous)
            announce(kafka, announcement(previous), timeout_s=retry.timeout_s)
        except Exception as again:  # noqa: BLE001 -- the broker still away: say so; the rollout check shows it
            log.warning("re-announcing %s after the rollback failed too (%s)", before.previous, again)
            told = (f" (re-announcing {before.previous} failed too: should the failed send have reached the topic "
                    f"after all, the Models page shows the workers on {before.version} until {before.previous} is "
                    "re-announced)")
    raise AnnouncementError(f"{why}: the activation was rolled back, {before.active_again} is active again{told}",
                            True) from exc
