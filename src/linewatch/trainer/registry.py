"""The model registry: versions in SQL (table ``models``), their files in the artifact store, per product.

A version of a product is ``<product>/v<N>`` (``v<N>`` for the default product: :mod:`linewatch.contracts.products`),
N counting per product; its model directory is copied to ``<artifact store>/<version>`` with ``version`` set in its
``model.json``, so every result scored with it carries that version. The database allocates N and the folder is
renamed into place only under that allocation (:meth:`ModelRegistry.register`), so registrations running at once
never share a number or a folder. Exactly one version of each product is ``active``; activating another retires
that product's active version only and announces the change to the workers under that product's key
(:mod:`linewatch.trainer.rollout`), retrying; an announcement that still fails rolls the activation back
(:mod:`linewatch.trainer.activation`), so SQL never names a version the workers were not told about. Every method
taking a ``product`` defaults to the default product, the one of everything recorded before products existed.
Status: candidate, active, retired, rejected.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import shutil
import time
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from linewatch.contracts.files import path_of, uri_of
from linewatch.contracts.messages import ModelAnnouncement
from linewatch.contracts.products import DEFAULT_PRODUCT, ProductError, canonical_version, check_product, version_name
from linewatch.contracts.schema import ModelVersion
from linewatch.contracts.settings import KafkaSettings, Settings
from linewatch.detector.model_files import ModelFileError, read_metadata

from .activation import (  # noqa: F401 -- AnnouncementError, Before, RegistryError re-exported
    AnnouncementError,
    Before,
    RegistryError,
    activate_in_sql,
    announce_if_overtaken,
    undo_failed_activation,
)
from .artifact_store import lost_a_race, publish, stage
from .rollout import AnnounceRetry, announce_with_retries

log = logging.getLogger(__name__)

# Registrations that lose a version number to another one try the next; this many in a row is not a race but a
# registration storm, reported as an error.
REGISTER_ATTEMPTS = 50


def artifact_path(version: ModelVersion) -> Path:
    return path_of(version.artifact_uri)


def _product(product: str) -> str:
    try:
        return check_product(product)
    except ProductError as exc:
        raise RegistryError(str(exc)) from None


def _version(version: str) -> str:
    try:
        return canonical_version(version)
    except ProductError as exc:
        raise RegistryError(str(exc)) from None


class ModelRegistry:
    """Registers, activates and rolls back model versions.

    Args:
        engine: the SQL store.
        artifact_root: the artifact store directory (shared by every machine that loads models).
        kafka: where activations are announced; None records them in SQL only.
        retry: how often, and how patiently, an announcement is tried (default: the ``[trainer]`` defaults).
    """

    def __init__(self, engine: Engine, artifact_root: Path, kafka: KafkaSettings | None,
                 retry: AnnounceRetry | None = None):
        self.engine = engine
        self.root = Path(artifact_root).resolve()
        self.kafka = kafka
        self.retry = retry or AnnounceRetry()

    @classmethod
    def for_settings(cls, settings: Settings, engine: Engine) -> ModelRegistry:
        """The registry of ``settings``' artifact store on ``engine``, announcing on its Kafka cluster (none
        configured: SQL only)."""
        return cls(engine, settings.artifact_store_root,
                   settings.kafka if settings.kafka.bootstrap_servers else None,
                   AnnounceRetry.from_settings(settings.trainer))

    # ---- reading --------------------------------------------------------------------------------------

    def list(self, product: str | None = DEFAULT_PRODUCT) -> list[ModelVersion]:
        """The versions of ``product`` (None: of every product, by product), oldest first."""
        query = select(ModelVersion).order_by(ModelVersion.product, ModelVersion.number)
        if product is not None:
            query = query.where(ModelVersion.product == _product(product))
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(query))

    def get(self, version: str) -> ModelVersion:
        """The version named ``version`` (``bottle/v3``; ``v3`` or ``default/v3`` for the default product).
        Raises: RegistryError, no such version or not a version name."""
        with Session(self.engine, expire_on_commit=False) as s:
            row = s.get(ModelVersion, _version(version))
        if row is None:
            raise RegistryError(f"no model version {version!r}")
        return row

    def active(self, product: str = DEFAULT_PRODUCT) -> ModelVersion | None:
        """``product``'s active version, None when it has none. Raises: RegistryError, an invalid product name."""
        with Session(self.engine, expire_on_commit=False) as s:
            return s.scalars(select(ModelVersion).where(ModelVersion.status == "active",
                                                        ModelVersion.product == _product(product))).first()

    # ---- writing --------------------------------------------------------------------------------------

    def register(self, model_dir: Path, *, parent: str | None = None, status: str = "candidate",
                 metrics: dict | None = None, notes: str | None = None,
                 product: str = DEFAULT_PRODUCT) -> ModelVersion:
        """Copy a model directory into the artifact store as the next version of ``product`` and record it.

        Safe when several registrations run at once (the trainer and ``linewatch model register``, on any
        machine): the database decides the number. The files are first copied to a private staging folder
        and checked; the row ``<product>/v<N>`` is inserted (``number`` is unique per product, so a second insert
        of N waits for the first to commit and then fails) and only while that insert holds N is the staging
        folder renamed to ``<artifact store>/<version>``, before the commit. A registration that lost N to another
        one rolls back, leaving the other's folder alone, and tries N+1. So the row and the folder of a version
        always describe the same model. Registrations of different products never compete for a number.

        Raises:
            ModelFileError: ``model_dir`` is not a model directory (no or an invalid model.json), or its
                weights do not match the SHA-256 its model.json records (incomplete, or changed while copied).
            RegistryError: no version number could be taken in :data:`REGISTER_ATTEMPTS` attempts, or an invalid
                product name.
        """
        product = _product(product)
        model_dir = Path(model_dir)
        meta = read_metadata(model_dir)
        staged = stage(self.root, model_dir, meta)
        try:
            for attempt in range(1, REGISTER_ATTEMPTS + 1):
                try:
                    row = self._record(staged, meta, product, parent=parent, status=status, metrics=metrics,
                                       notes=notes)
                except (IntegrityError, OperationalError) as exc:
                    if not lost_a_race(exc):
                        raise
                    log.info("version number taken by another registration (attempt %d): retrying", attempt)
                    time.sleep(random.uniform(0.0, 0.02 * attempt))  # two losers do not collide again in step
                    continue
                log.info("registered model %s (%s) from %s", row.version, status, model_dir)
                return row
        finally:
            shutil.rmtree(staged, ignore_errors=True)  # already renamed away when the registration succeeded
        raise RegistryError(f"could not take a version number in {REGISTER_ATTEMPTS} attempts: "
                            "too many registrations at once; try again")

    def _record(self, staged: Path, meta: dict, product: str, *, parent: str | None, status: str,
                metrics: dict | None, notes: str | None) -> ModelVersion:
        """One attempt: insert the next number, rename ``staged`` to its folder, commit. Raises IntegrityError
        (or, on SQLite, OperationalError 'database is locked') when another registration took the number."""
        dest = None
        with Session(self.engine, expire_on_commit=False) as s:
            try:
                with s.begin():
                    number = (s.scalar(select(func.max(ModelVersion.number))
                                       .where(ModelVersion.product == product)) or 0) + 1
                    version = version_name(product, number)
                    row = ModelVersion(
                        version=version, product=product, number=number, parent_version=parent,
                        backbone=meta["backbone"],
                        created_at=dt.datetime.now(dt.UTC), artifact_uri=uri_of(self.root / version),
                        weights_sha256=meta["weights_sha256"],  # stage() checked the copy against it
                        manifest=meta.get("manifest", []),
                        metrics=metrics or {"validation": meta.get("validation")},
                        thresholds=meta["thresholds"], status=status, notes=notes,
                    )
                    s.add(row)
                    s.flush()  # from here until the commit, N is this registration's
                    dest = publish(self.root, staged, version)
            except Exception:
                if dest is not None:  # the commit failed, or its answer was lost: does row vN exist?
                    mine = self._committed_anyway(row)
                    if mine is True:
                        log.warning("registration of %s: the commit's answer was lost, but the row is there", version)
                        return self.get(version)
                    if mine is False:  # the folder belongs to no row: back to staging
                        os.replace(dest, staged)
                    # None (the database cannot say): the folder stays; a later registration of that number
                    # finds it without a row and moves it aside, so nothing is deleted on a guess
                raise
        return row

    def _committed_anyway(self, row: ModelVersion) -> bool | None:
        """After a failed commit: True if ``row`` was committed all the same (the answer lost with the
        connection), False if no row has its version, None when that cannot be told (the database away, or
        another registration's row holds the version since)."""
        try:
            with Session(self.engine) as s:
                found = s.get(ModelVersion, row.version)
                if found is None:
                    return False
                if found.thresholds == row.thresholds and found.manifest == row.manifest:
                    return True
                return None  # another registration's row: the folder at vN may be its own now; leave it
        except Exception:  # noqa: BLE001 -- the database away: nobody can tell
            return None

    def set_status(self, version: str, status: str, notes: str | None = None) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(ModelVersion, version)
            if row is None:
                raise RegistryError(f"no model version {version!r}")
            row.status = status
            if notes:
                row.notes = f"{row.notes}\n{notes}" if row.notes else notes

    def activate(self, version: str, by: str, notes: str | None = None) -> ModelVersion:
        """Make ``version`` the active model of its product (that product's previous one is retired; no other
        product's version changes) and announce it to the workers under its product's key.

        Activating a rejected candidate is an operator's override; it is recorded in the notes. The announcement
        is tried ``retry.attempts`` times; when every try fails the activation is rolled back (the version gets
        back its status, the one active before is active again, the notes say why), since the workers still run
        what the topic last named.
        Raises:
            RegistryError: unknown version (or not a version name), or SQL could not be written at that moment
            (nothing changed). AnnouncementError: the announcement failed
            and the activation was rolled back (or could not be: the message says which).
        """
        now = dt.datetime.now(dt.UTC)
        version = _version(version)
        try:
            row, before = activate_in_sql(self.engine, version, by, notes, now)
        except (IntegrityError, OperationalError) as exc:
            if not lost_a_race(exc):
                raise
            raise RegistryError(f"{version} was not activated: the registry could not be written at that moment "
                                f"({type(exc).__name__}: another write held it, or made another version of the product "
                                "active); look at the registry again") from None
        log.info("model %s activated by %s", version, by)
        try:
            self.announce(row)
        except Exception as exc:  # noqa: BLE001 -- KafkaError after the retries, or anything else: SQL goes back
            undo_failed_activation(self.engine, before, by, now, exc, self.retry, self.kafka, self._announcement)
        if self.kafka is not None:
            announce_if_overtaken(row, self.active, self.announce)
        return row

    @staticmethod
    def _announcement(row: ModelVersion) -> ModelAnnouncement:
        return ModelAnnouncement(version=row.version, artifact_uri=row.artifact_uri,
                                 activated_at=row.activated_at or dt.datetime.now(dt.UTC),
                                 activated_by=row.activated_by, product=row.product)

    def announce(self, row: ModelVersion) -> None:
        """Announce ``row`` on the models topic under its product's key, tried ``retry.attempts`` times (nothing
        without Kafka). Raises KafkaError when every try failed."""
        if self.kafka is not None:
            announce_with_retries(self.kafka, self._announcement(row), self.retry)

    def reannounce(self, by: str, product: str = DEFAULT_PRODUCT) -> ModelVersion:
        """Announce ``product``'s active version again (after an announcement that failed: SQL says vN is active
        while the models topic, and so the workers, still name another); the notes record who did it and when.

        Raises:
            RegistryError: no version is active, or no Kafka cluster is configured to announce on.
            KafkaError: the announcement failed again.
        """
        if self.kafka is None:
            raise RegistryError("no Kafka cluster is configured (kafka.bootstrap_servers): nothing to announce on")
        row = self.active(product)
        if row is None:
            raise RegistryError(f"no version of {product} is active: nothing to announce")
        self.announce(row)
        note = f"re-announced by {by} at {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
        with Session(self.engine) as s, s.begin():  # the notes only: the status is activate()'s to change
            s.execute(update(ModelVersion).where(ModelVersion.version == row.version)
                      .values(notes=func.coalesce(ModelVersion.notes + "\n", "") + note))
        log.info("model %s re-announced by %s", row.version, by)
        return self.get(row.version)

    def rollback(self, by: str, to: str | None = None, product: str = DEFAULT_PRODUCT) -> ModelVersion:
        """Re-activate ``product``'s version that was active before its current one. ``to``: the version the person
        confirmed (the Models page); refused when the registry has changed since and another one would be
        re-activated.

        Raises:
            RegistryError: the product has no earlier active version, or it is not ``to``; an invalid product name.
        """
        current = self.active(product)
        with Session(self.engine, expire_on_commit=False) as s:
            query = select(ModelVersion).where(ModelVersion.status == "retired", ModelVersion.product == product,
                                               ModelVersion.activated_at.is_not(None))
            if current is not None:
                query = query.where(ModelVersion.version != current.version)
            previous = s.scalars(query.order_by(ModelVersion.activated_at.desc())).first()
        if previous is None:
            raise RegistryError(f"no earlier active version of {product} to roll back to")
        if to is not None and previous.version != _version(to):
            raise RegistryError(f"the registry changed since: rolling back now would re-activate {previous.version}, "
                                f"not {to}; look again and confirm")
        return self.activate(previous.version, by, notes=f"rollback from {current.version if current else 'none'}")

    def ensure_active(self, model_dir: Path, by: str, product: str = DEFAULT_PRODUCT) -> ModelVersion:
        """``product``'s active version, announced again; when it has none, ``model_dir`` is used (see :meth:`use`)."""
        current = self.active(product)
        if current is None:
            return self.use(model_dir, by, product)
        self.announce(current)
        return current

    def use(self, model_dir: Path, by: str, product: str = DEFAULT_PRODUCT) -> ModelVersion:
        """Make the model in ``model_dir`` ``product``'s active version, registering it first if the product has no
        version with the same weights; announces it."""
        sha = read_metadata(Path(model_dir))["weights_sha256"]
        for row in self.list(product):
            try:
                same = read_metadata(artifact_path(row))["weights_sha256"] == sha
            except ModelFileError:
                continue
            if same:
                if row.status == "active":
                    self.announce(row)
                    return row
                return self.activate(row.version, by)
        row = self.register(model_dir, status="candidate", notes=f"registered by {by}", product=product)
        return self.activate(row.version, by)
