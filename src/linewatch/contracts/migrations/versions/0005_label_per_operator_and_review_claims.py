"""One standing label per (inspection, operator), and the review queue's claims.

A double click on Good wrote two label rows (field case c32); from now on a partial unique index on
``labels (inspection_id, operator) WHERE revoked_at IS NULL`` makes a second click a no-op. Existing duplicates
are kept, not deleted: each older unrevoked label of the same operator and frame is marked revoked at the
moment its newer one was made, which is what it already meant (the newest unrevoked label counts), so no
effective label, confirmed good or second-opinion count changes. ``review_claims`` records which operator has a
frame open on the Review page, until when.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 05:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STANDING = sa.text("revoked_at IS NULL")


def _revoke_duplicates() -> int:
    """Revoke every unrevoked label that a newer unrevoked label of the same operator and frame supersedes."""
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT id, inspection_id, operator, created_at FROM labels WHERE revoked_at IS NULL "
        "AND (inspection_id, operator) IN (SELECT inspection_id, operator FROM labels WHERE revoked_at IS NULL "
        "GROUP BY inspection_id, operator HAVING count(*) > 1) "
        "ORDER BY inspection_id, operator, created_at DESC, id DESC")).all()
    newest: dict[tuple, object] = {}
    revoked = 0
    for row in rows:
        key = (row.inspection_id, row.operator)
        if key not in newest:
            newest[key] = row.created_at  # the label that stands
            continue
        # created_at comes back as the database stores it (naive UTC text on SQLite), so it goes back as is
        conn.execute(sa.text("UPDATE labels SET revoked_at = :at WHERE id = :id"), {"at": newest[key], "id": row.id})
        revoked += 1
    return revoked


def upgrade() -> None:
    _revoke_duplicates()
    op.create_index("uq_labels_standing", "labels", ["inspection_id", "operator"], unique=True,
                    postgresql_where=STANDING, sqlite_where=STANDING)
    op.create_table(
        "review_claims",
        sa.Column("inspection_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("operator", sa.String(128), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["inspection_id"], ["inspections.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("inspection_id"),
    )


def downgrade() -> None:
    # the labels revoked by upgrade stay revoked: they were superseded before, and nothing reads them as standing
    op.drop_table("review_claims")
    op.drop_index("uq_labels_standing", table_name="labels")
