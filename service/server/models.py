"""SQLAlchemy tables. Rows hold JSON text of the contract types, so the wire and the trajectory
export read the very numbers a trainer posted and a policy returned.

The schema of a database is changed only by the migrations in ``migrations/versions/`` (Alembic):
a change here needs a new revision there (``tests/service/server/test_migrations.py`` compares
the two)."""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "RunRow", "DecisionRow", "PolicyArtifact", "PolicyCurrent"]


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    """One trainer's run: its domain space, budget and the policy version it is pinned to."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_owner_idempotency_key", "owner", "idempotency_key", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    space_json: Mapped[str] = mapped_column(Text)
    objective_json: Mapped[str] = mapped_column(Text)
    meta_json: Mapped[str] = mapped_column(Text)
    horizon: Mapped[int] = mapped_column(Integer)
    interval: Mapped[int] = mapped_column(Integer)
    policy_name: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[str] = mapped_column(String(64))
    initial_mixture_id: Mapped[str] = mapped_column(String(32))
    initial_weights_json: Mapped[str] = mapped_column(Text)
    initial_served_by_json: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    """``{"fallback": ..., "reason": ...}`` when a fallback baseline chose the initial mixture; NULL
    when the run's policy did (and in rows written before fallbacks existed)."""
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)
    """The ``Idempotency-Key`` header of the creating request (unique per owner; NULL: none sent)."""
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    """Hash of the creating request's body: a retry with the key must send the same body."""
    bounds_json: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    """``{"min_share": {domain: x}, "max_share": {domain: y}}`` every decision is projected onto
    (NULL: no bounds, and in rows written before bounds existed)."""


class DecisionRow(Base):
    """The answer to one feedback: ``seq`` orders a run's decisions; ``(run, step)`` is unique, so a
    retried or racing post can never record a second decision for the same step."""

    __tablename__ = "decisions"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_decision_run_step"),)

    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer)
    decision_id: Mapped[str] = mapped_column(String(32), unique=True)
    payload_hash: Mapped[str] = mapped_column(String(64))
    feedback_json: Mapped[str] = mapped_column(Text)
    mixture_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    weights_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    served_by_json: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)
    """Like ``RunRow.initial_served_by_json``, for this decision (a retry answers with the same)."""


class PolicyArtifact(Base):
    """An artifact loaded through the admin route; replicas and restarts reload it from ``path``."""

    __tablename__ = "policy_artifacts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    card_json: Mapped[str] = mapped_column(Text)
    loaded_at: Mapped[float] = mapped_column(Float)
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    """sha256 of the artifact's files when it was loaded: a replica whose copy at ``path`` differs
    refuses it rather than serve other decisions under the same version."""


class PolicyCurrent(Base):
    """Which version of a policy new runs get: one row per name, shared by every replica (the truth
    that a load through any replica changes). Names without a row use the replica's own start-up
    choice (built-ins, bundled artifacts, the policy folder scan), which is the same on replicas
    started alike."""

    __tablename__ = "policy_current"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[float] = mapped_column(Float)
