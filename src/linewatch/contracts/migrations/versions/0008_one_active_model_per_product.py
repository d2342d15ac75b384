"""One active model version per product, enforced by the record: a unique index on ``models.product`` over the rows
whose ``status`` is ``'active'`` (a partial index, on SQLite and on PostgreSQL).

The registry retires a product's active version and activates another in one transaction; two such transactions at
once each retired only what they had read as active and both committed, leaving two active versions (PostgreSQL) or
none (SQLite), and which one a reader took was chance. The registry now locks the product's rows first, so they run
one after the other (:func:`linewatch.trainer.activation.lock_product_of`); the index is the record's own guard
against any write that would still make a second version active: that write fails and changes nothing.

A record that already holds several active versions of a product keeps the most recently activated one active (the
highest number among equal or missing activation times) and retires the others, each with a note saying why; the
migration logs each such change, with the command that announces the kept version again (the models topic may name
another one). Downgrading drops the index only.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 08:30:00
"""

import datetime as dt
import logging

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INDEX = "uq_models_one_active_per_product"
ACTIVE = sa.text("status = 'active'")

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    conn = op.get_bind()
    models = sa.table("models", sa.column("version"), sa.column("product"), sa.column("number"),
                      sa.column("status"), sa.column("activated_at"), sa.column("notes"))
    crowded = conn.execute(sa.select(models.c.product).where(models.c.status == "active")
                           .group_by(models.c.product).having(sa.func.count() > 1)).scalars().all()
    at = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
    for product in crowded:
        active = conn.execute(sa.select(models.c.version).where(models.c.status == "active",
                                                                models.c.product == product)
                              .order_by(models.c.activated_at.desc().nulls_last(), models.c.number.desc())
                              ).scalars().all()
        keep, extra = active[0], active[1:]
        note = (f"retired by the record's migration 0008 at {at}: {len(active)} versions of {product} were active "
                f"at once; {keep}, the last activated (the highest number where none has a time), stays active")
        conn.execute(sa.update(models).where(models.c.version.in_(extra)).values(
            status="retired", notes=sa.func.coalesce(models.c.notes + "\n", "") + note))
        log.warning("product %s had %d active model versions: %s stays active, %s retired; announce it to the workers "
                    "again: linewatch model reannounce --product %s", product, len(active), keep, ", ".join(extra),
                    product)
    op.create_index(INDEX, "models", ["product"], unique=True, sqlite_where=ACTIVE, postgresql_where=ACTIVE)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="models")
