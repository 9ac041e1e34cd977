"""Jobs whose latest change is recorded but not yet known to be announced on the event stream.

``unannounced_since`` is set by every write that records a run's outcome (succeeded, failed, retrying) or a
cancellation, in the same statement, and cleared once that change's event was published. Beat's ``reap_stale``
publishes the event of a job still unannounced after a while (its writer died between the commit and the publish,
or Redis refused the event), so a job's latest state always reaches the stream. The partial index holds only the
few rows waiting.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("unannounced_since", sa.DateTime(timezone=True), nullable=True))
    waiting = sa.text("unannounced_since IS NOT NULL")
    op.create_index(
        "ix_jobs_unannounced", "jobs", ["unannounced_since"], sqlite_where=waiting, postgresql_where=waiting
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_unannounced", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("unannounced_since")
