"""The first schema (release 0.1.0 before migrations existed, commit 5c21ac1): runs, their
decisions, and the policy artifacts loaded through the admin route.

A database made by a release before migrations has these tables but no ``alembic_version``; it is
stamped with this revision and then upgraded (``0002`` adds only what such a database lacks).

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("space_json", sa.Text(), nullable=False),
        sa.Column("objective_json", sa.Text(), nullable=False),
        sa.Column("meta_json", sa.Text(), nullable=False),
        sa.Column("horizon", sa.Integer(), nullable=False),
        sa.Column("interval", sa.Integer(), nullable=False),
        sa.Column("policy_name", sa.String(64), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("initial_mixture_id", sa.String(32), nullable=False),
        sa.Column("initial_weights_json", sa.Text(), nullable=False),
    )
    op.create_index("ix_runs_owner", "runs", ["owner"])
    op.create_table(
        "decisions",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("decision_id", sa.String(32), nullable=False, unique=True),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("feedback_json", sa.Text(), nullable=False),
        sa.Column("mixture_id", sa.String(32), nullable=True),
        sa.Column("weights_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("run_id", "step", name="uq_decision_run_step"),
    )
    op.create_table(
        "policy_artifacts",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("card_json", sa.Text(), nullable=False),
        sa.Column("loaded_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("policy_artifacts")
    op.drop_table("decisions")
    op.drop_index("ix_runs_owner", table_name="runs")
    op.drop_table("runs")
