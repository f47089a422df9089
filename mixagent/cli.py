"""The ``mixagent`` command: one entry point, a sub-command group per part.

The root sits above every floor (it may import all of them); each group's module keeps its heavy
imports inside its commands, so ``mixagent --help`` loads neither torch nor d3rlpy.
"""

from __future__ import annotations

from typing import Annotated

import typer

from mixagent import __version__
from mixagent.agent.cli import agent_app, generate_cmd
from mixagent.console import configure_logging
from mixagent.env.cli import corpus_app, env_app
from mixagent.service.cli import register as _register_service
from mixagent.trajectories.cli import trajectories_app

app = typer.Typer(
    name="mixagent",
    help="Learned data-mixing schedules for continual pre-training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(corpus_app, name="corpus")
app.add_typer(env_app, name="env")
trajectories_app.command("generate")(generate_cmd)
app.add_typer(trajectories_app, name="trajectories")
app.add_typer(agent_app, name="agent")
_register_service(app)


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
