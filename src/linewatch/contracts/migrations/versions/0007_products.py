"""Products: the part type a frame shows, with its own model versions and training jobs (issue 18,
``docs/products.md``).

``product`` (NOT NULL, server default ``'default'``) on ``models``, ``inspections`` and ``training_jobs``: every
existing row becomes the product ``default``. Version numbers become unique per product (``uq_models_product_number``
replaces the unique ``number`` of 0001, unnamed on SQLite, ``models_number_key`` on PostgreSQL). ``camera_products``
records changeovers (which product a camera shows from when on). Downgrading refuses while any row belongs to
another product: their version numbers would collide, and the rows would silently become the one product's.

``inspections`` is never copied (Alembic's batch mode on SQLite would copy it into a new table and drop the old one,
and with foreign keys on, as linewatch's SQLite engines have them, dropping it deletes every label and review claim
by ON DELETE CASCADE): its column is added and dropped in place (ALTER TABLE ... DROP COLUMN: SQLite 3.35 or newer).
Only ``models``, which nothing references, is copied, to change its unique constraint.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 17:00:00
"""

import sqlalchemy as sa
from alembic import op

from linewatch.contracts.database import DowngradeRefused

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

DEFAULT = "default"
TABLES = ("models", "inspections", "training_jobs")
# 0001 left the unique constraint on models.number unnamed; on SQLite the batch copy names it by this convention
# so that it can be dropped (Alembic's documented way), PostgreSQL named it <table>_<column>_key itself.
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _number_constraint() -> str:
    return "uq_models_number" if op.get_bind().dialect.name == "sqlite" else "models_number_key"


def upgrade() -> None:
    for table in TABLES:  # in place on every backend (a constant default: SQLite's ALTER TABLE ADD COLUMN takes it)
        op.add_column(table, sa.Column("product", sa.String(40), nullable=False, server_default=DEFAULT))
    with op.batch_alter_table("models", schema=None, naming_convention=SQLITE_NAMES) as batch_op:
        batch_op.drop_constraint(_number_constraint(), type_="unique")
        batch_op.create_unique_constraint("uq_models_product_number", ["product", "number"])
    op.create_index("ix_inspections_product_time", "inspections", ["product", "captured_at"])
    op.create_table(
        "camera_products",
        sa.Column("camera_id", sa.String(128), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("product", sa.String(40), nullable=False),
        sa.Column("set_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("camera_id", "since"),
    )


def downgrade() -> None:
    conn = op.get_bind()
    for table in TABLES:
        others = conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE product <> 'default'")).scalar()  # noqa: S608 -- fixed names
        if others:
            raise DowngradeRefused(f"cannot downgrade below 0007: {others} {table} rows belong to products other than "
                               "'default'; an older release would mix them with the default product's")
    op.drop_table("camera_products")
    op.drop_index("ix_inspections_product_time", table_name="inspections")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_constraint("uq_models_product_number", type_="unique")
        batch_op.create_unique_constraint("models_number_key" if conn.dialect.name != "sqlite" else
                                          "uq_models_number", ["number"])
    for table in TABLES:  # in place, never a copy (see the module docstring)
        if conn.dialect.name == "sqlite":
            op.execute(f"ALTER TABLE {table} DROP COLUMN product")
        else:
            op.drop_column(table, "product")
