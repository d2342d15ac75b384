"""Index inspections by processed_at: live counts are bucketed by processing time and rebuilt from the record.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:20:00
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.create_index("ix_inspections_processed_at", ["processed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.drop_index("ix_inspections_processed_at")
