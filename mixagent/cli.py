"""The ``mixagent`` command: one entry point, a sub-command group per part."""

from __future__ import annotations

from typing import Annotated

import typer

from mixagent import __version__
from mixagent.env.cli import configure_logging, corpus_app, env_app
from mixagent.trajectories.cli import trajectories_app

app = typer.Typer(
    name="mixagent",
    help="Learned data-mixing schedules for continual pre-training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(corpus_app, name="corpus")
app.add_typer(env_app, name="env")
from mixagent.service.cli import register as _register_service  # noqa: E402

_register_service(app)
app.add_typer(trajectories_app, name="trajectories")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress messages.")] = False,
) -> None:
    """mixagent: decide, as a continual pre-training run goes, which data it trains on next."""
    configure_logging(verbose)


@app.command()
def version() -> None:
    """Print the package version."""
    typer.echo(__version__)


if __name__ == "__main__":  # pragma: no cover
    app()
