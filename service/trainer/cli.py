"""``mixagent demo``: the trainer side's command (needs the ``train`` and ``service`` extras)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mixagent.console import fail

__all__ = ["demo"]


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
