"""Run heartbeats, crash counts and retry times on jobs.

``heartbeat_at`` is touched by the run holding a started job, so a dead run is known within seconds;
``crashes`` counts runs that died holding the job (a job that keeps killing its workers is stopped);
``next_attempt_at`` is when a retrying job's next attempt is due (the dispatcher sends it then).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("crashes", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("crashes")
        batch.drop_column("next_attempt_at")
        batch.drop_column("heartbeat_at")
