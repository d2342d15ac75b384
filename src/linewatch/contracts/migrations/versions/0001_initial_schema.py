"""Initial schema: cameras, inspections, labels, models, training_jobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-29 14:49:14.049484
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("cameras",
    sa.Column("camera_id", sa.String(length=128), nullable=False),
    sa.Column("line_id", sa.String(length=128), nullable=False),
    sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("camera_id")
    )
    with op.batch_alter_table("cameras", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cameras_line_id"), ["line_id"], unique=False)

    op.create_table("inspections",
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
    sa.Column("camera_id", sa.String(length=128), nullable=False),
    sa.Column("line_id", sa.String(length=128), nullable=False),
    sa.Column("frame_id", sa.BigInteger(), nullable=False),
    sa.Column("part_id", sa.String(length=128), nullable=True),
    sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_version", sa.String(length=64), nullable=False),
    sa.Column("image_score", sa.Float(), nullable=False),
    sa.Column("normalized_score", sa.Float(), nullable=False),
    sa.Column("verdict", sa.String(length=8), nullable=False),
    sa.Column("threshold", sa.Float(), nullable=False),
    sa.Column("regions", sa.JSON(), nullable=False),
    sa.Column("width", sa.Integer(), nullable=False),
    sa.Column("height", sa.Integer(), nullable=False),
    sa.Column("queue_wait_ms", sa.Float(), nullable=False),
    sa.Column("decode_ms", sa.Float(), nullable=False),
    sa.Column("inference_ms", sa.Float(), nullable=False),
    sa.Column("total_ms", sa.Float(), nullable=False),
    sa.Column("worker_id", sa.String(length=128), nullable=False),
    sa.Column("image_uri", sa.Text(), nullable=True),
    sa.Column("heatmap_uri", sa.Text(), nullable=True),
    sa.Column("kafka_topic", sa.String(length=255), nullable=True),
    sa.Column("kafka_partition", sa.Integer(), nullable=True),
    sa.Column("kafka_offset", sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("camera_id", "frame_id", name="uq_inspections_camera_frame")
    )
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.create_index("ix_inspections_camera_time", ["camera_id", "captured_at"], unique=False)
        batch_op.create_index("ix_inspections_line_time", ["line_id", "captured_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_inspections_model_version"), ["model_version"], unique=False)
        batch_op.create_index("ix_inspections_verdict_time", ["verdict", "captured_at"], unique=False)

    op.create_table("models",
    sa.Column("version", sa.String(length=64), nullable=False),
    sa.Column("number", sa.Integer(), nullable=False),
    sa.Column("parent_version", sa.String(length=64), nullable=True),
    sa.Column("backbone", sa.String(length=64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("artifact_uri", sa.Text(), nullable=False),
    sa.Column("manifest", sa.JSON(), nullable=False),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("thresholds", sa.JSON(), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("activated_by", sa.String(length=128), nullable=True),
    sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("notes", sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint("version"),
    sa.UniqueConstraint("number")
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_models_status"), ["status"], unique=False)

    op.create_table("training_jobs",
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("trigger", sa.String(length=32), nullable=False),
    sa.Column("requested_by", sa.String(length=128), nullable=True),
    sa.Column("from_scratch", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("stage", sa.String(length=32), nullable=True),
    sa.Column("epoch", sa.Integer(), nullable=True),
    sa.Column("epochs", sa.Integer(), nullable=True),
    sa.Column("loss", sa.Float(), nullable=True),
    sa.Column("eta_s", sa.Float(), nullable=True),
    sa.Column("candidate_version", sa.String(length=64), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("worker_pid", sa.Integer(), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_jobs_status"), ["status"], unique=False)

    op.create_table("labels",
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
    sa.Column("inspection_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
    sa.Column("label", sa.String(length=8), nullable=False),
    sa.Column("operator", sa.String(length=128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("note", sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(["inspection_id"], ["inspections.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.create_index("ix_labels_inspection", ["inspection_id", "created_at"], unique=False)



def downgrade() -> None:
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.drop_index("ix_labels_inspection")

    op.drop_table("labels")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_jobs_status"))

    op.drop_table("training_jobs")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_status"))

    op.drop_table("models")
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.drop_index("ix_inspections_verdict_time")
        batch_op.drop_index(batch_op.f("ix_inspections_model_version"))
        batch_op.drop_index("ix_inspections_line_time")
        batch_op.drop_index("ix_inspections_camera_time")

    op.drop_table("inspections")
    with op.batch_alter_table("cameras", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cameras_line_id"))

    op.drop_table("cameras")
