"""``mixagent demo`` and ``mixagent runs plot``: the trainer side's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mixagent.console import fail

__all__ = ["demo", "runs_app"]


def demo(
    setting: Annotated[str, typer.Option(help="Setting name or YAML path.")] = "math-tiny",
    policy: Annotated[str | None, typer.Option(
        help="Policy the service runs (default: the service's default, i.e. the bundled agent, else uniform).",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="Folder for the plot and the exported trajectories.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Episode seed (both runs use it).")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache folder (default $MIXAGENT_HOME).")] = None,
) -> None:
    """A short real continual pre-training with the service in the loop, against a uniform mixture
    (math-tiny: two episodes of a few minutes each on one core; one line per stage)."""
    try:
        from mixagent.service.trainer.demo import DemoError, run_demo  # noqa: PLC0415
    except ModuleNotFoundError as e:
        fail(f"demo needs the service extra ({e.name} is not installed): pip install 'mixagent[all]'", 2)
    try:
        run_demo(setting=setting, policy=policy, out=out, seed=seed, cache_dir=cache_dir, echo=typer.echo)
    except DemoError as e:
        fail(f"demo: {e}", 2)


runs_app = typer.Typer(help="Runs on a mixing service, seen from the trainer side.", no_args_is_help=True)


@runs_app.command("plot")
def plot_run(
    run_id: Annotated[str, typer.Argument(help="The run's id (POST /v1/runs answered it).")],
    url: Annotated[str, typer.Option(envvar="MIXAGENT_URL", help="The service's base URL.")] = "http://127.0.0.1:8000",
    token: Annotated[str, typer.Option(envvar="MIXAGENT_TOKEN", help="A token the service accepts.")] = "",
    out: Annotated[Path | None, typer.Option(help="PNG to write (default: runs/plots/RUN_ID.png).")] = None,
) -> None:
    """Draw a run's domain weights, field scores and per-domain loss changes over time, from the
    service (its exported trajectory: the mixtures really trained on)."""
    from mixagent.service.trainer.client import MixagentError, MixingClient  # noqa: PLC0415
    from mixagent.trajectories.contract import Trajectory  # noqa: PLC0415

    try:
        from mixagent.trajectories.plots import plot_history  # noqa: PLC0415 - matplotlib (train extra)

        with MixingClient(url, token, retries=1) as client:
            lines = client.export_trajectories([run_id])
    except MixagentError as e:
        fail(f"runs plot: {e}", 2)
    if not lines:
        fail(f"runs plot: run {run_id!r} has no trajectory to draw yet (no feedback recorded)", 2)
    trajectory = Trajectory.model_validate_json(lines[0])
    path = plot_history(trajectory.history, out or Path("runs/plots") / f"{run_id}.png",
                        title=f"run {run_id} ({trajectory.header.setting_name})")
    typer.echo(f"{path}: {trajectory.history.stages} stages of run {run_id}")
