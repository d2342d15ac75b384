"""The model registry: versions in SQL (table ``models``), their files in the artifact store.

A version is ``v<N>``; its model directory is copied to ``<artifact store>/v<N>`` with ``version`` set
in its ``model.json``, so every result scored with it carries that version. Exactly one version is
``active``; activating another retires it and announces the change to the workers
(:mod:`linewatch.trainer.rollout`). Status: candidate, active, retired, rejected.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from linewatch.contracts.files import path_of, uri_of
from linewatch.contracts.messages import ModelAnnouncement
from linewatch.contracts.schema import ModelVersion
from linewatch.contracts.settings import KafkaSettings
from linewatch.detector.model_files import ModelFileError, read_metadata, write_metadata

from .rollout import announce

log = logging.getLogger(__name__)


class RegistryError(ValueError):
    """An unknown version, or a request the registry's state does not allow; the message says why."""


def artifact_path(version: ModelVersion) -> Path:
    return path_of(version.artifact_uri)


class ModelRegistry:
    """Registers, activates and rolls back model versions.

    Args:
        engine: the SQL store.
        artifact_root: the artifact store directory (shared by every machine that loads models).
        kafka: where activations are announced; None records them in SQL only.
    """

    def __init__(self, engine: Engine, artifact_root: Path, kafka: KafkaSettings | None):
        self.engine = engine
        self.root = Path(artifact_root).resolve()
        self.kafka = kafka

    # ---- reading --------------------------------------------------------------------------------------

    def list(self) -> list[ModelVersion]:
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(ModelVersion).order_by(ModelVersion.number)))

    def get(self, version: str) -> ModelVersion:
        with Session(self.engine, expire_on_commit=False) as s:
            row = s.get(ModelVersion, version)
        if row is None:
            raise RegistryError(f"no model version {version!r}")
        return row

    def active(self) -> ModelVersion | None:
        with Session(self.engine, expire_on_commit=False) as s:
            return s.scalars(select(ModelVersion).where(ModelVersion.status == "active")).first()

    # ---- writing --------------------------------------------------------------------------------------

    def register(self, model_dir: Path, *, parent: str | None = None, status: str = "candidate",
                 metrics: dict | None = None, notes: str | None = None) -> ModelVersion:
        """Copy a model directory into the artifact store as the next version and record it.

        Raises:
            ModelFileError: ``model_dir`` is not a model directory (no or an invalid model.json).
        """
        model_dir = Path(model_dir)
        meta = read_metadata(model_dir)
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            number = (s.scalar(select(func.max(ModelVersion.number))) or 0) + 1
            version = f"v{number}"
            dest = self._copy(model_dir, version)
            row = ModelVersion(
                version=version, number=number, parent_version=parent, backbone=meta["backbone"],
                created_at=dt.datetime.now(dt.UTC), artifact_uri=uri_of(dest),
                manifest=meta.get("manifest", []), metrics=metrics or {"validation": meta.get("validation")},
                thresholds=meta["thresholds"], status=status, notes=notes,
            )
            s.add(row)
        log.info("registered model %s (%s) from %s", version, status, model_dir)
        return row

    def _copy(self, model_dir: Path, version: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        dest = self.root / version
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.root))
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        meta = read_metadata(tmp)
        meta["version"] = version
        write_metadata(tmp, meta)
        if dest.exists():  # left over from a registration whose SQL transaction failed
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return dest

    def set_status(self, version: str, status: str, notes: str | None = None) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(ModelVersion, version)
            if row is None:
                raise RegistryError(f"no model version {version!r}")
            row.status = status
            if notes:
                row.notes = f"{row.notes}\n{notes}" if row.notes else notes

    def activate(self, version: str, by: str, notes: str | None = None) -> ModelVersion:
        """Make ``version`` the active model (the previous one is retired) and announce it to the workers.

        Activating a rejected candidate is an operator's override; it is recorded in the notes.
        Raises:
            RegistryError: unknown version. KafkaError: the announcement failed (SQL already records the
            activation; run the command again to re-announce).
        """
        now = dt.datetime.now(dt.UTC)
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            row = s.get(ModelVersion, version)
            if row is None:
                raise RegistryError(f"no model version {version!r}")
            if row.status == "rejected":
                notes = f"override by {by}: activated although rejected by the promotion rule" + (
                    f"; {notes}" if notes else "")
            s.execute(update(ModelVersion).where(ModelVersion.status == "active", ModelVersion.version != version)
                      .values(status="retired"))
            row.status, row.activated_by, row.activated_at = "active", by, now
            if notes:
                row.notes = f"{row.notes}\n{notes}" if row.notes else notes
        log.info("model %s activated by %s", version, by)
        self.announce(row)
        return row

    def announce(self, row: ModelVersion) -> None:
        if self.kafka is not None:
            announce(self.kafka, ModelAnnouncement(version=row.version, artifact_uri=row.artifact_uri,
                                                   activated_at=row.activated_at or dt.datetime.now(dt.UTC),
                                                   activated_by=row.activated_by))

    def rollback(self, by: str) -> ModelVersion:
        """Re-activate the version that was active before the current one.

        Raises:
            RegistryError: there is no earlier active version.
        """
        current = self.active()
        with Session(self.engine, expire_on_commit=False) as s:
            query = select(ModelVersion).where(ModelVersion.status == "retired",
                                               ModelVersion.activated_at.is_not(None))
            if current is not None:
                query = query.where(ModelVersion.version != current.version)
            previous = s.scalars(query.order_by(ModelVersion.activated_at.desc())).first()
        if previous is None:
            raise RegistryError("no earlier active version to roll back to")
        return self.activate(previous.version, by, notes=f"rollback from {current.version if current else 'none'}")

    def ensure_active(self, model_dir: Path, by: str) -> ModelVersion:
        """The active version, announced again; when none is active, ``model_dir`` is used (see :meth:`use`)."""
        current = self.active()
        if current is None:
            return self.use(model_dir, by)
        self.announce(current)
        return current

    def use(self, model_dir: Path, by: str) -> ModelVersion:
        """Make the model in ``model_dir`` the active version, registering it first if the registry has no
        version with the same weights; announces it."""
        sha = read_metadata(Path(model_dir))["weights_sha256"]
        for row in self.list():
            try:
                same = read_metadata(artifact_path(row))["weights_sha256"] == sha
            except ModelFileError:
                continue
            if same:
                if row.status == "active":
                    self.announce(row)
                    return row
                return self.activate(row.version, by)
        row = self.register(model_dir, status="candidate", notes=f"registered by {by}")
        return self.activate(row.version, by)
