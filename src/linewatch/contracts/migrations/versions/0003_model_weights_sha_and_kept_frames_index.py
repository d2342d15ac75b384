"""Record each model version's weights SHA-256 in its row; index the frames whose image is kept, by processing
time, for image retention (oldest first, without walking the rows whose image is gone).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 03:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

KEPT = sa.text("image_uri IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weights_sha256", sa.String(64), nullable=True))
    op.create_index("ix_inspections_kept_processed_at", "inspections", ["processed_at", "id"],
                    postgresql_where=KEPT, sqlite_where=KEPT)


def downgrade() -> None:
    op.drop_index("ix_inspections_kept_processed_at", table_name="inspections")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("weights_sha256")
