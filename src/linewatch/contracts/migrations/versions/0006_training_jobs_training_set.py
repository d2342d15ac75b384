"""Record what each training job trains on (confirmed goods found, used, held out, and each one dropped with its
reason), so the Models page can show it under the job's progress. Nullable: jobs before it have none.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 12:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("training_set", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_column("training_set")
