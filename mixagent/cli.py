"""The ``mixagent`` command: one entry point, a sub-command group per part.

The root sits above every floor (it may import all of them); each group's module keeps its heavy
imports inside its commands, so ``mixagent --help`` loads neither torch nor d3rlpy.

Two things hold for every command, so they are done here, once: typer's own help and usage-error
panels get the same width rule as :func:`mixagent.console.console` (full lines when piped, not 80
columns), and a command that needs an extra which is not installed (torch, gymnasium, matplotlib
... on a service-only install) ends with the one line that says which one, not a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer import rich_utils

from mixagent import __version__
from mixagent.agent.cli import agent_app, generate_cmd
from mixagent.console import configure_logging, console, missing_extra, typer_width
from mixagent.env.cli import corpus_app, env_app
from mixagent.service.cli import register as _register_service
from mixagent.trajectories.cli import trajectories_app

_TERMINAL_WIDTH = rich_utils.MAX_WIDTH
"""typer's own setting (``TERMINAL_WIDTH`` in the environment), which wins when a user sets it."""


class _Root(typer.Typer):
    """The root command as the ``mixagent`` script runs it (``app()``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # typer reads its panel width from this module global whenever it draws (help, usage errors)
        rich_utils.MAX_WIDTH = _TERMINAL_WIDTH if _TERMINAL_WIDTH is not None else typer_width()
        try:
            return super().__call__(*args, **kwargs)
        except ModuleNotFoundError as e:
            line = missing_extra(e)
            if line is None:  # not an optional dependency: a bug, keep the traceback
                raise
            console(stderr=True).print(line, style="red", markup=False, highlight=False)
            sys.exit(1)


app = _Root(
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
