"""Who served each decision (``runs.initial_served_by_json``, ``decisions.served_by_json``), the
digest of a loaded artifact's files (``policy_artifacts.digest``) and the current version of each
policy shared by every replica (``policy_current``, seeded with the newest recorded load of each
name, as a restart used to pick).

Releases before migrations added these additively at start-up, so a database stamped ``0001`` may
hold some of them already: each is added only if missing, and the seed runs only on an empty table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = (
    ("runs", sa.Column("initial_served_by_json", sa.Text(), nullable=True)),
    ("decisions", sa.Column("served_by_json", sa.Text(), nullable=True)),
    ("policy_artifacts", sa.Column("digest", sa.String(64), nullable=True)),
)


def upgrade() -> None:
    have = sa.inspect(op.get_bind())
    for table, column in COLUMNS:
        if column.name not in {c["name"] for c in have.get_columns(table)}:
            op.add_column(table, column)
    if not have.has_table("policy_current"):
        op.create_table(
            "policy_current",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("version", sa.String(64), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
        )
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT 1 FROM policy_current LIMIT 1")).first() is None:
        newest: dict[str, tuple[float, str]] = {}
        for name, version, loaded_at in conn.execute(
                sa.text("SELECT name, version, loaded_at FROM policy_artifacts")):
            if name not in newest or loaded_at >= newest[name][0]:
                newest[name] = (loaded_at, version)
        for name, (loaded_at, version) in sorted(newest.items()):
            conn.execute(sa.text("INSERT INTO policy_current (name, version, updated_at) VALUES (:n, :v, :t)"),
                         {"n": name, "v": version, "t": loaded_at})


def downgrade() -> None:
    op.drop_table("policy_current")
    for table, column in reversed(COLUMNS):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column.name)
