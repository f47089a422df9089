"""``mixagent trajectories …``: validate, inspect and import datasets of mixing trajectories.

Thin shells over :mod:`.storage` and :mod:`.stats`; matplotlib is imported inside the command that
needs it. ``trajectories generate`` runs the env, so it lives a floor up (``agent/cli.py``) and the
root CLI adds it to this group.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from mixagent.console import console as _console
from mixagent.console import fail

__all__ = ["trajectories_app"]

console = _console()
trajectories_app = typer.Typer(
    help="Generate, validate and inspect datasets of real mixing trajectories.", no_args_is_help=True
)

DirArg = Annotated[Path, typer.Argument(help="Dataset folder (holds records/ and card.json).")]


def _need_folder(directory: Path) -> None:
    """Exit 2 with one line when ``directory`` is missing or not a folder."""
    if not directory.is_dir():
        why = "not a folder" if directory.exists() else "no such folder"
        fail(f"{directory}: {why}", 2)


def _bad(problems: list[str], message: str) -> None:
    problems.append(message)
    typer.echo(f"BAD {message}", err=True)


@trajectories_app.command("import")
def import_cmd(
    source: Annotated[Path, typer.Argument(help="JSON Lines of Trajectory objects (e.g. a service export).")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to add the records to.")],
) -> None:
    """Add exported trajectories (the service's served runs) to a dataset folder as records."""
    # lazy, as in every command here: loaded when the command runs, not by `mixagent --help`
    from mixagent.trajectories.contract import ContractError  # noqa: PLC0415
    from mixagent.trajectories.environment import FolderEnvironment  # noqa: PLC0415
    from mixagent.trajectories.stats import build_card, summarise  # noqa: PLC0415
    from mixagent.trajectories.storage import (  # noqa: PLC0415
        FileStore,
        import_jsonl,
        read_json_object,
        write_json_atomic,
    )

    store = FileStore(out)
    try:
        with store.lock("import"):
            pinned = read_json_object(out / "generate.json") if (out / "generate.json").exists() else {}
            # A generated folder is one environment (trajectories/environment.py); others take any run.
            environment = FolderEnvironment.of(out, store.load_all()) if pinned else None
            report = import_jsonl(source, store, setting_hash=pinned.get("setting_hash"), environment=environment)
            card = build_card([summarise(r) for r in store.load_all()])
            write_json_atomic(out / "card.json", card)
    except ContractError as e:  # a bad record or line, or a run of another environment
        fail(str(e))
    for line in report.unfinished:
        typer.echo(f"left out (not finished): {source}: {line}")
    typer.echo(f"{out}: {report.imported} imported, {report.skipped} already there, {len(report.unfinished)} "
               f"unfinished left out; {card['counts']['trajectories']} in all")


@trajectories_app.command("validate")
def validate_cmd(directory: DirArg) -> None:
    """Check every record (exit 1 and one message per bad file); in-progress records are listed."""
    # lazy: loaded when the command runs
    from mixagent.trajectories.contract import ContractError  # noqa: PLC0415
    from mixagent.trajectories.stats import build_card, summarise  # noqa: PLC0415
    from mixagent.trajectories.storage import FileStore, RecordError, StoredTrajectory, read_json_object  # noqa: PLC0415

    _need_folder(directory)
    store = FileStore(directory)
    bad: list[str] = []
    good: list[StoredTrajectory] = []
    for r in store.iter_checked():
        if isinstance(r, RecordError):
            _bad(bad, str(r))
        else:
            good.append(r)
    for pid in store.partial_ids():
        typer.echo(f"in progress (not accepted): {store.partial / (pid + '.jsonl')}")
    for tmp in store.stale_temporaries():
        typer.echo(f"crash leftover (ignored, removed by the next generate): {tmp}")
    if not store.records.is_dir():
        _bad(bad, f"{store.records}: missing (not a dataset folder)")
    else:
        for stray in sorted(store.records.iterdir()):
            if not stray.name.startswith(".") and not stray.name.endswith(".jsonl.gz"):
                _bad(bad, f"{stray}: not a record (records are <id>.jsonl.gz)")
    pinned_path, card_path = directory / "generate.json", directory / "card.json"
    if pinned_path.exists():
        try:
            pinned = read_json_object(pinned_path).get("setting_hash")
        except RecordError as e:
            _bad(bad, str(e))
        else:
            for r in good:
                if r.trajectory.header.setting_hash != pinned:
                    _bad(bad, f"{r.path}: header.setting_hash {r.trajectory.header.setting_hash} is not the "
                              f"folder's setting {pinned!r} ({pinned_path})")
    if card_path.exists() and good:
        try:
            card = read_json_object(card_path)
            fresh = build_card([summarise(r) for r in good])
        except ContractError as e:  # RecordError (the card file) or a summary the records cannot make
            _bad(bad, str(e))
        else:
            if card.get("counts") != fresh["counts"] or card.get("families") != fresh.get("families"):
                _bad(bad, f"{card_path}: counts/families do not match the records "
                          "(rebuild: trajectories stats --write-card)")
    typer.echo(f"{directory}: {len(good)} valid record(s), {len(bad)} problem(s)")
    if bad:
        raise typer.Exit(1)


@trajectories_app.command("stats")
def stats_cmd(
    directory: DirArg,
    plots: Annotated[Path | None, typer.Option(help="Folder for the plots (default DIR/plots).")] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Only print the table.")] = False,
    write_card: Annotated[bool, typer.Option("--write-card", help="Rebuild DIR/card.json from the records.")] = False,
) -> None:
    """Per-family table of final balanced scores and costs, plus schedule/score/outcome plots."""
    # lazy: loaded when the command runs
    from mixagent.trajectories.stats import (  # noqa: PLC0415
        FAMILY_COLUMNS,
        FAMILY_LEGEND,
        build_card,
        family_notes,
        family_rows,
        prior_target_share,
        summarise,
    )
    from mixagent.trajectories.storage import FileStore, RecordError, write_json_atomic  # noqa: PLC0415

    _need_folder(directory)
    if not no_plots and importlib.util.find_spec("matplotlib") is None:  # say so before any work
        fail("the plots need matplotlib (the train extra): pip install 'mixagent[train]', or pass --no-plots")
    store = FileStore(directory)
    try:
        stored = store.load_all()
    except RecordError as e:
        fail(f"{e} (run `mixagent trajectories validate {directory}`)", 1)
    if not stored:
        fail(f"{directory}: no finished trajectories", 1)
    summaries = [summarise(r) for r in stored]
    card = build_card(summaries)
    table = Table(title=f"{directory}: {card['setting_name']} ({card['setting_hash']}), {card['model']}",
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    rows = family_rows(summaries)
    for col in FAMILY_COLUMNS:
        if col == "family":
            table.add_column(col, no_wrap=True)
        else:
            table.add_column(col, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(FAMILY_LEGEND, highlight=False)
    for note in family_notes({s.family for s in summaries}, prior_target_share(stored[0].trajectory.history.space)):
        console.print(note, highlight=False)
    console.print(f"{card['counts']['trajectories']} trajectories, {card['counts']['stages']} stages, "
                  f"{card['wall_time_s']['total'] / 3600:.2f} CPU-hours of generation", highlight=False)
    for i, env in enumerate(card["environments"]):
        console.print(f"environment {i}: {env['trajectories']} trajectories, start drift {env['start_drift']:.2g} "
                      f"nats; numerics: {env['numerics']}; corpus {env['corpus']}, base {env['base']}", highlight=False)
    if write_card:
        try:
            with store.lock("rewrite the card"):
                write_json_atomic(directory / "card.json", card)
        except RecordError as e:
            fail(f"{e} (a running generator keeps the card up to date itself)", 1)
        console.print(f"card written to {directory / 'card.json'}")
    if not no_plots:
        from mixagent.trajectories.plots import plot_dataset  # noqa: PLC0415 - matplotlib: only for plots

        for p in plot_dataset([r.trajectory for r in stored], plots or directory / "plots"):
            console.print(f"plot: {p}", highlight=False)
