"""``mixagent serve``, ``mixagent export-runs``, ``mixagent db`` and ``mixagent demo``, registered on the root
command.

The command modules import only typer at module level; each room (server, trainer) is imported when
its command runs, so ``mixagent --help`` and the other commands work on a core install.
"""

from __future__ import annotations

import typer

from mixagent.service.server.cli import db_app, export_runs, serve
from mixagent.service.trainer.cli import demo, runs_app

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("export-runs")(export_runs)
    app.add_typer(db_app, name="db")
    app.command("demo")(demo)
    app.add_typer(runs_app, name="runs")
