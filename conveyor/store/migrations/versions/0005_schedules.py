"""User schedules, and the link from a job to the schedule that fired it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("cron", sa.String(200), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("every_seconds", sa.Integer, nullable=True),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("next_due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_job_id", sa.String(36), nullable=True),
        sa.Column("fired", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("owner", "name", name="uq_schedules_owner_name"),
    )
    op.create_index("ix_schedules_owner_id", "schedules", ["owner", "id"])
    op.create_index("ix_schedules_due", "schedules", ["paused", "next_due_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("schedule_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_jobs_schedule_id_id", ["schedule_id", "id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_schedule_id_id")
        batch.drop_column("scheduled_for")
        batch.drop_column("schedule_id")
    op.drop_index("ix_schedules_due", "schedules")
    op.drop_index("ix_schedules_owner_id", "schedules")
    op.drop_table("schedules")
