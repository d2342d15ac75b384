"""Record each inspection's lighting / exposure drift flag (linewatch.detector.drift), so the record shows which
rejects came while their camera's light had drifted. Nullable: rows before it, and models without reference
statistics, have none.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 06:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("drift", sa.JSON(), nullable=True))


def downgrade() -> None:
    # In place, never batch mode's copy: on SQLite the copy ends in DROP TABLE inspections, which with foreign keys
    # on deletes every label and review claim (ON DELETE CASCADE). SQLite drops a column in place since 3.35.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE inspections DROP COLUMN drift")
    else:
        op.drop_column("inspections", "drift")
