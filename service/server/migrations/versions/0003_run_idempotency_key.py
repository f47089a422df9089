"""Idempotent run creation: a run remembers the ``Idempotency-Key`` it was created with and a hash of
the request, unique per owner, so a retried ``POST /v1/runs`` answers with the run the first attempt
created instead of creating a second one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("idempotency_key", sa.String(128), nullable=True))
    op.add_column("runs", sa.Column("request_hash", sa.String(64), nullable=True))
    op.create_index("ix_runs_owner_idempotency_key", "runs", ["owner", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_runs_owner_idempotency_key", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
