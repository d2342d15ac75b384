"""The registry's files: staging a model directory into the artifact store and renaming it into its version's
folder (``<artifact store>/<version>``: ``<root>/v3`` for the default product, ``<root>/bottle/v3`` for the product
``bottle``). :class:`linewatch.trainer.registry.ModelRegistry` decides when; these functions do the file work."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from sqlalchemy.exc import IntegrityError, OperationalError

from linewatch.contracts.files import sha256_file
from linewatch.detector.model_files import (
    METADATA_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    export_paths,
    read_metadata,
    write_metadata,
)

log = logging.getLogger(__name__)
PG_UNIQUE_VIOLATION, PG_LOCK_NOT_AVAILABLE = "23505", "55P03"  # PostgreSQL's SQLSTATEs (Appendix A)


def lost_a_race(exc: IntegrityError | OperationalError) -> bool:
    """Whether a write failed because another transaction made a conflicting one at the same time (another
    registration took the number, another activation made its version the product's active one): a unique
    violation, or a lock the other one held longer than the wait allowed (SQLite's 'database is locked',
    PostgreSQL's lock_timeout). PostgreSQL's errors are told apart by their SQLSTATE, which does not depend on the
    server's message language; SQLite's by their wording."""
    sqlstate = getattr(exc.orig, "sqlstate", None)  # psycopg's; None for sqlite3
    if sqlstate is not None:
        return sqlstate in (PG_UNIQUE_VIOLATION, PG_LOCK_NOT_AVAILABLE)
    message = str(exc.orig).lower()
    if isinstance(exc, IntegrityError):
        return "unique" in message
    return "locked" in message or "busy" in message


def stage(root: Path, model_dir: Path, meta: dict) -> Path:
    """A private copy of ``model_dir`` in the artifact store ``root`` (same file system, so renaming it is atomic),
    its weights checked against ``weights_sha256`` and its exports (ONNX, OpenVINO IR), if any, against their
    records.

    Raises:
        ModelFileError: the copied weights or an export do not match their record (incomplete, or changed while
            being copied); nothing is left behind.
    """
    root.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".staging.", dir=root))
    try:
        staged.chmod(0o755)  # mkdtemp's 0700 would hide the model from workers running as another user
        shutil.copytree(model_dir, staged, dirs_exist_ok=True)
        if sha256_file(staged / WEIGHTS_FILE) != meta["weights_sha256"]:
            raise ModelFileError(f"{model_dir / WEIGHTS_FILE}: content does not match the SHA-256 recorded in "
                                 f"{METADATA_FILE} (incomplete, or changed while being copied)")
        export_paths(staged, meta)  # the exports travel with their version, checked like the weights
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def publish(root: Path, staged: Path, version: str) -> Path:
    """Stamp ``version`` into the staged model.json and rename the folder to ``<root>/<version>`` (its product's
    folder is made first when it is the product's first version). Returns that folder."""
    meta = read_metadata(staged)
    meta["version"] = version
    write_metadata(staged, meta)
    dest = root / version
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        # No row has this number (the insert just took it), so the folder is an orphan: left by a process killed
        # between rename and commit, or by a database restored to an older state. Kept aside.
        aside = Path(tempfile.mkdtemp(prefix=f".orphan.{version.replace('/', '.')}.", dir=root))
        os.replace(dest, aside / dest.name)
        log.warning("artifact folder %s had no registry row; moved to %s", dest, aside)
    os.replace(staged, dest)
    return dest
