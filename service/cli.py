"""``mixagent serve``, ``mixagent export-runs`` and ``mixagent demo`` (registered on the root app)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register", "serve", "export_runs", "demo"]


def _apply_overrides(**values: object) -> None:
    """Command-line options win over MIXAGENT_* variables; uvicorn's factory reads the environment."""
    for key, value in values.items():
        if value is not None:
            os.environ[f"MIXAGENT_{key.upper()}"] = str(value)


def _settings():  # type: ignore[no-untyped-def]
    from pydantic import ValidationError  # noqa: PLC0415

    from mixagent.service.config import Settings  # noqa: PLC0415

    try:
        return Settings()
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'settings'}: {x['msg']}" for x in e.errors())
        typer.echo(f"invalid settings: {msgs}", err=True)
        raise typer.Exit(2) from None


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (MIXAGENT_HOST, default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (MIXAGENT_PORT, default 8000).")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (MIXAGENT_DATABASE_URL).")] = None,
    policy_dir: Annotated[Path | None, typer.Option(help="Policy artifact folder (MIXAGENT_POLICY_DIR).")] = None,
    default_policy: Annotated[str | None, typer.Option(help="Policy of runs naming none.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
) -> None:
    """Run the mixing service (uvicorn). Settings come from MIXAGENT_* variables and these options."""
    import uvicorn  # noqa: PLC0415

    _apply_overrides(host=host, port=port, database_url=database_url, policy_dir=policy_dir,
                     default_policy=default_policy)
    s = _settings()
    typer.echo(f"mixagent serving on http://{s.host}:{s.port} (database {s.database_url.split('@')[-1]})")
    uvicorn.run("mixagent.service.main:create_app", factory=True, host=s.host, port=s.port,
                workers=workers, log_level=s.log_level)


def export_runs(
    out: Annotated[Path, typer.Argument(help="JSON Lines file to write (one trajectory per line).")],
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (MIXAGENT_DATABASE_URL).")] = None,
    finished_only: Annotated[bool, typer.Option(help="Skip runs that still expect feedback.")] = False,
) -> None:
    """Export every served run as a trajectory record (the data flywheel)."""
    from mixagent.service.db import init_db, make_engine, make_sessionmaker  # noqa: PLC0415
    from mixagent.service.export import export_trajectories, write_jsonl  # noqa: PLC0415
    from mixagent.service.metrics import Metrics  # noqa: PLC0415
    from mixagent.service.registry import PolicyRegistry  # noqa: PLC0415
    from mixagent.service.runs import RunStore  # noqa: PLC0415

    _apply_overrides(database_url=database_url)
    s = _settings()
    engine = make_engine(s)
    init_db(engine)
    registry = PolicyRegistry(s.default_policy)
    store = RunStore(make_sessionmaker(engine), registry, Metrics())
    store.reload_artifacts()
    n = write_jsonl(export_trajectories(store, finished_only=finished_only), out)
    typer.echo(f"wrote {n} trajectories to {out}")


def demo(
    setting: Annotated[str, typer.Option(help="Setting name or YAML path.")] = "math-tiny",
    policy: Annotated[str, typer.Option(help="Policy the service runs.")] = "fixed-target-share",
    out: Annotated[Path, typer.Option(help="Folder for the plot and the exported trajectories.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Episode seed (both runs use it).")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder (default $MIXAGENT_HOME).")] = None,
) -> None:
    """A short real continual pre-training with the service in the loop, against a uniform mixture."""
    from mixagent.service.demo import run_demo  # noqa: PLC0415

    run_demo(setting=setting, policy=policy, out=out, seed=seed, cache_dir=cache_dir, echo=typer.echo)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("export-runs")(export_runs)
    app.command("demo")(demo)
