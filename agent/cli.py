"""``mixagent agent …`` (train, export, evaluate) and ``mixagent trajectories generate``.

Thin shells over :mod:`.generate`, :mod:`.train`, :mod:`.export` and :mod:`.evaluate`; torch and
d3rlpy are imported inside the commands that need them. ``generate_cmd`` belongs to the
``trajectories`` group; the root CLI adds it there (generation runs the env, a floor above the
ground where the rest of that group lives).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mixagent.console import console as _console

__all__ = ["agent_app", "generate_cmd"]

console = _console()
err_console = _console(stderr=True)
agent_app = typer.Typer(help="Train, export and evaluate mixing policies.", no_args_is_help=True)


def generate_cmd(
    setting: Annotated[str, typer.Option("--setting", "-s", help="Setting file (YAML/TOML) or a name in configs/.")],
    n: Annotated[int, typer.Option("--n", help="Trajectories the folder should hold (the plan's first N).")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder (resumed when it exists).")],
    workers: Annotated[int, typer.Option(help="Parallel workers, one env (model) each.")] = 1,
    executor: Annotated[str, typer.Option(help="'local' (process pool) or 'ray'.")] = "local",
    threads: Annotated[int, typer.Option(help="torch threads per worker (0: cores / workers).")] = 0,
    families: Annotated[str, typer.Option(help="Comma-separated schedule families (default: all built-in).")] = "",
    seed: Annotated[int, typer.Option(help="Base seed of the plan.")] = 0,
    level: Annotated[str, typer.Option(help="'field' or 'domain' schedules (default: the setting's action level).")] = "",
    ray_address: Annotated[str, typer.Option(help="Ray cluster address (default: start a local Ray).")] = "",
    cache_dir: Annotated[Path | None, typer.Option(help="Corpus/base-model cache (default $MIXAGENT_HOME).")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar (off: one log line per trajectory).")] = True,
    plugin: Annotated[list[str] | None, typer.Option(help="Deprecated: a module that registers families by calling register_family (entry points replace it).")] = None,
    start_tolerance: Annotated[float, typer.Option(
        help="Refuse runs whose first evaluation differs from the folder's by more (nats, any domain).")] = 0.01,
    adopt_corpus: Annotated[bool, typer.Option(
        "--adopt-corpus", help="Let a folder whose records predate provenance take this machine's corpus.")] = False,
) -> None:
    """Run the behaviour schedules of the plan in the real env; resumes an existing folder."""
    from mixagent.agent.generate import GenerateConfig, GenerateError, generate  # noqa: PLC0415
    from mixagent.env.setting import SettingError, load_setting  # noqa: PLC0415
    from mixagent.trajectories.contract import ContractError  # noqa: PLC0415
    from mixagent.trajectories.schedules import BUILTIN_FAMILIES  # noqa: PLC0415

    if executor not in ("local", "ray"):
        err_console.print(f"[red]--executor: must be 'local' or 'ray', got {executor!r}[/red]")
        raise typer.Exit(2)
    if level not in ("", "field", "domain"):
        err_console.print(f"[red]--level: must be 'field' or 'domain', got {level!r}[/red]")
        raise typer.Exit(2)
    try:
        s = load_setting(setting)
    except SettingError as e:
        err_console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    fams = tuple(f.strip() for f in families.split(",") if f.strip()) or BUILTIN_FAMILIES
    cfg = GenerateConfig(
        out=out, n=n, families=fams, seed=seed, level=level or None, workers=workers, threads=threads,  # type: ignore[arg-type]
        executor=executor, ray_address=ray_address or None, cache_dir=cache_dir, progress=progress,  # type: ignore[arg-type]
        plugins=tuple(plugin or ()), start_tolerance=start_tolerance, adopt_corpus=adopt_corpus,
    )
    try:
        report = generate(cfg, s)
    except (GenerateError, ContractError) as e:
        err_console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    per = report.seconds_per_trajectory
    mean = f"; {sum(per) / len(per):.1f} s per trajectory" if per else ""
    console.print(
        f"{report.out}: {report.already_done + report.generated}/{report.planned} planned trajectories finished "
        f"({report.generated} now, {report.already_done} before) in {report.wall_s:.0f} s{mean}"
    )
