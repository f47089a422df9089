"""Alembic's environment for the service's database: run by :func:`mixagent.service.server.db.init_db`
(at start-up and by ``mixagent db upgrade``) on a connection it passes in ``config.attributes``, inside
the caller's transaction (PostgreSQL: under an advisory lock; SQLite: ``BEGIN IMMEDIATE``), so a
migration is all or nothing and replicas starting together take turns. There is no ``alembic.ini``:
the configuration is built in code, so the migrations work from an installed wheel."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite",
                  transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
