"""``mixagent serve`` and ``mixagent export-runs``: the server's commands.

Only typer is imported at module level; the web stack is imported when a command runs. Every
start-up problem a user can fix (invalid settings, a missing extra, a policy folder that does not
exist, a database that does not answer) ends the command with one line that says what to do, and
exit status 2. Output is plain text (``typer.echo``), never cut to the terminal width when piped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mixagent.console import fail

if TYPE_CHECKING:
    from mixagent.service.server.config import Settings

__all__ = ["serve", "export_runs", "db_app", "APP_FACTORY"]

APP_FACTORY = "mixagent.service.server.main:create_app"
"""What uvicorn runs (``--factory``): it reads its settings from the ``MIXAGENT_*`` environment."""


def _apply_overrides(**values: object) -> None:
    """Command-line options win over MIXAGENT_* variables; uvicorn's factory reads the environment."""
    for key, value in values.items():
        if value is not None:
            os.environ[f"MIXAGENT_{key.upper()}"] = str(value)


def _settings() -> Settings:
    try:
        from pydantic import ValidationError  # noqa: PLC0415

        from mixagent.service.server.config import Settings  # noqa: PLC0415
        from mixagent.service.server.errors import format_validation_errors  # noqa: PLC0415
    except ModuleNotFoundError as e:
        fail(f"the service needs its extra ({e.name} is not installed): pip install 'mixagent[service]'", 2)
    try:
        return Settings()
    except ValidationError as e:
        fail(f"invalid settings: {format_validation_errors(e.errors(), root='settings')[0]}", 2)


def _check_database(s: Settings) -> None:
    """Connect once, so an unreachable or misnamed database is one line, not a traceback."""
    from mixagent.service.server.db import DatabaseUnavailable, check_database  # noqa: PLC0415

    try:
        check_database(s)
    except DatabaseUnavailable as e:
        fail(f"{e} (MIXAGENT_DATABASE_URL / --database-url)", 2)


def _check_default_policy(s: Settings) -> None:
    """Refuse to start (one line, exit 2) when MIXAGENT_POLICY_DIR holds a card that cannot be loaded
    (the operator put it there to be served), or the default policy is none this service has: not a
    built-in, not in the bundle or the policy folder, not recorded in the database."""
    from mixagent.service.server.main import open_store  # noqa: PLC0415
    from mixagent.service.server.registry import PolicyRegistry  # noqa: PLC0415
    from mixagent.trajectories.contract import ContractError  # noqa: PLC0415

    if s.policy_dir is not None:
        refused = PolicyRegistry(fallback=s.fallback_policy).load_dir(s.policy_dir)
        if refused:
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            fail(f"policy_dir: {refused[0]}{more} (MIXAGENT_POLICY_DIR / --policy-dir)", 2)
    store, _ = open_store(s)
    try:
        store.policies.entry(None)
    except ContractError as e:
        fail(f"default_policy: {s.default_policy or store.registry.default_name!r} cannot be served: {e} "
             "(MIXAGENT_DEFAULT_POLICY / --default-policy)", 2)
    finally:
        store.engine.dispose()


def _migrate(s: Settings) -> list[str]:
    """Bring the database's schema to this release's (the revisions applied); a database this release
    cannot serve (made by a newer one) is one line."""
    from mixagent.service.server.db import SchemaError, init_db, make_engine  # noqa: PLC0415

    engine = make_engine(s)
    try:
        return init_db(engine, on_wait=lambda note: typer.echo(note, err=True))
    except SchemaError as e:
        fail(str(e), 2)
    finally:
        engine.dispose()


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (MIXAGENT_HOST, default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (MIXAGENT_PORT, default 8000).")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL (MIXAGENT_DATABASE_URL; default an SQLite file in the user data folder).")] = None,
    policy_dir: Annotated[Path | None, typer.Option(help="Policy artifact folder (MIXAGENT_POLICY_DIR).")] = None,
    default_policy: Annotated[str | None, typer.Option(help="Policy of runs naming none.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
) -> None:
    """Run the mixing service (uvicorn). Settings come from MIXAGENT_* variables and these options."""
    _apply_overrides(host=host, port=port, database_url=database_url, policy_dir=policy_dir,
                     default_policy=default_policy)
    s = _settings()
    try:
        import uvicorn  # noqa: PLC0415
    except ModuleNotFoundError as e:
        fail(f"the service needs its extra ({e.name} is not installed): pip install 'mixagent[service]'", 2)
    from mixagent.service.server.config import DEV_TOKEN  # noqa: PLC0415
    from mixagent.service.server.limits import uvicorn_limits  # noqa: PLC0415

    if s.policy_dir is not None and not s.policy_dir.is_dir():
        fail(f"policy_dir: {str(s.policy_dir)!r} is not a folder (MIXAGENT_POLICY_DIR / --policy-dir)", 2)
    _check_database(s)
    applied = _migrate(s)  # here, so a schema problem is one line (each replica's app checks again: a no-op)
    _check_default_policy(s)
    typer.echo(f"mixagent serving on http://{s.host}:{s.port} (OpenAPI at /docs)")
    typer.echo(f"  database: {s.database_display}" + (f" (schema upgraded: {', '.join(applied)})" if applied else ""))
    if DEV_TOKEN in s.token_list:
        typer.echo(f"  token: the development token {DEV_TOKEN!r} (environment=local only; "
                   "set MIXAGENT_TOKENS for your own)")
    else:
        typer.echo(f"  tokens: {len(s.token_list)} from MIXAGENT_TOKENS, {len(s.admin_token_list)} admin")
    if s.policy_dir is not None:
        typer.echo(f"  policy dir: {s.policy_dir}")
    uvicorn.run(APP_FACTORY, factory=True, host=s.host, port=s.port, workers=workers, log_level=s.log_level,
                **uvicorn_limits())


def export_runs(
    out: Annotated[Path, typer.Argument(help="JSON Lines file to write (one trajectory per line).")],
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (MIXAGENT_DATABASE_URL).")] = None,
    finished_only: Annotated[bool, typer.Option(help="Skip runs that still expect feedback.")] = False,
) -> None:
    """Export every served run as a trajectory record (the data flywheel)."""
    _apply_overrides(database_url=database_url)
    s = _settings()
    _check_database(s)
    from mixagent.service.server.export import export_trajectories, write_jsonl  # noqa: PLC0415
    from mixagent.service.server.main import open_store  # noqa: PLC0415

    _migrate(s)
    store, _ = open_store(s)
    n = write_jsonl(export_trajectories(store, finished_only=finished_only), out)
    typer.echo(f"wrote {n} trajectories to {out}")


db_app = typer.Typer(help="The service's database schema: versioned migrations (Alembic), also applied at start-up.",
                     no_args_is_help=True)
DatabaseOpt = Annotated[str | None, typer.Option(
    help="SQLAlchemy URL (MIXAGENT_DATABASE_URL; default the SQLite file in the user data folder).")]


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseOpt = None) -> None:
    """Apply the migrations this release has and the database lacks (what `mixagent serve` does at
    start-up); data are kept. Run it before starting replicas of a new release, or let them do it."""
    _apply_overrides(database_url=database_url)
    s = _settings()
    _check_database(s)
    from mixagent.service.server.db import head_revision  # noqa: PLC0415

    applied = _migrate(s)
    if applied:
        typer.echo(f"{s.database_display}: upgraded to {head_revision()} (applied: {', '.join(applied)})")
    else:
        typer.echo(f"{s.database_display}: already at {head_revision()}, nothing to apply")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="The revision to go back to (e.g. 0002), or 'base' (no tables).")],
    database_url: DatabaseOpt = None,
) -> None:
    """Undo migrations down to REVISION, to run an older release on this database. A downgrade can drop
    columns and tables with their data (each migration's downgrade says which): export first."""
    _apply_overrides(database_url=database_url)
    s = _settings()
    _check_database(s)
    from mixagent.service.server.db import SchemaError, downgrade_db, make_engine  # noqa: PLC0415

    engine = make_engine(s)
    try:
        undone = downgrade_db(engine, revision, on_wait=lambda note: typer.echo(note, err=True))
    except SchemaError as e:
        fail(str(e), 2)
    finally:
        engine.dispose()
    if undone:
        typer.echo(f"{s.database_display}: downgraded to {revision} (undone: {', '.join(undone)})")
    else:
        typer.echo(f"{s.database_display}: already at {revision}, nothing to undo")


@db_app.command("prune")
def db_prune(
    finished_before: Annotated[str, typer.Option(
        help="Delete the runs that finished before this date (ISO 8601: 2026-12-01 or 2026-12-01T12:00; UTC "
             "unless it says otherwise). Runs still expecting feedback are kept.")],
    export: Annotated[Path | None, typer.Option(
        help="First write the deleted runs to this JSON Lines file, as trajectories (like export-runs).")] = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Retention: delete finished runs older than a date, exporting them first with --export, so the
    data flywheel loses nothing (`mixagent trajectories import FILE --out DIR` reads the export)."""
    import datetime as dt  # noqa: PLC0415

    try:
        when = dt.datetime.fromisoformat(finished_before)
    except ValueError:
        fail(f"--finished-before: {finished_before!r} is not an ISO 8601 date or date-time (e.g. 2026-12-01)", 2)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    _apply_overrides(database_url=database_url)
    s = _settings()
    _check_database(s)
    from mixagent.service.server.main import open_store  # noqa: PLC0415
    from mixagent.service.server.retention import prune  # noqa: PLC0415

    _migrate(s)
    store, _ = open_store(s)
    try:
        report = prune(store, when.timestamp(), export)
    finally:
        store.engine.dispose()
    saved = f"; {report.exported} exported to {export} first" if export is not None else ""
    typer.echo(f"{s.database_display}: deleted {report.runs} runs finished before {when.isoformat()} "
               f"({report.decisions} decisions){saved}")


@db_app.command("current")
def db_current(database_url: DatabaseOpt = None) -> None:
    """Say which schema revision the database is at, and this release's newest."""
    _apply_overrides(database_url=database_url)
    s = _settings()
    _check_database(s)
    from mixagent.service.server.db import BASELINE, head_revision, make_engine, schema_revision  # noqa: PLC0415

    engine = make_engine(s)
    try:
        current = schema_revision(engine)
        from sqlalchemy import inspect  # noqa: PLC0415

        made_before = current is None and inspect(engine).has_table("runs")
    finally:
        engine.dispose()
    head = head_revision()
    if current is None:
        state = (f"none (made before migrations; the next upgrade adopts it as {BASELINE})" if made_before
                 else "none (empty; the next upgrade creates every table)")
    elif current == head:
        state = f"{current} (this release's newest)"
    else:
        state = f"{current} (this release's newest is {head}: `mixagent db upgrade`, or start the service)"
    typer.echo(f"{s.database_display}: schema revision: {state}")
