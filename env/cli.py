"""``mixagent corpus …`` and ``mixagent env …``: build data and base models, run an episode.

Thin shells over :mod:`mixagent.env`; heavy imports happen inside the commands so that
``mixagent --help`` and the service stay free of torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from mixagent.console import console as _console
from mixagent.console import fail
from mixagent.env.setting import Setting, SettingError, load_setting, with_device
from mixagent.trajectories.contract import SOURCE_FIELD
from mixagent.trajectories.encoding import field_shares_to_weights

__all__ = ["corpus_app", "env_app"]

console = _console()
corpus_app = typer.Typer(help="Build and inspect the multi-domain corpus of a setting.", no_args_is_help=True)
env_app = typer.Typer(help="Pre-train base models and run CPT episodes in the environment.", no_args_is_help=True)

SettingOpt = Annotated[
    str, typer.Option("--setting", "-s", help="Setting file (YAML/TOML) or the name of one in configs/.")
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="Where the model computes: cpu, cuda or auto (cuda when available); "
                                              "default: the setting's runtime.device (cpu).")
]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache-dir", help="Cache folder (default $MIXAGENT_HOME or ~/.cache/mixagent).")
]


@env_app.command("pin")
def env_pin(
    setting: SettingOpt,
    out: Annotated[Path, typer.Option("--out", help="The pin folder to write (must not exist).")],
    cache_dir: CacheOpt = None,
) -> None:
    """Freeze a setting's tokenised data and base checkpoint into a folder (for a benchmark that must
    run on the same tokens and weights on every machine, after Debian has moved a package on)."""
    from mixagent.env.pinned import PinError, pin_setting  # noqa: PLC0415 - torch: only when it runs

    s = _load(setting)
    with _clear_errors():
        try:
            pin_setting(s, out, cache_dir, _say)
        except PinError as e:
            fail(str(e), 2)


@env_app.command("install-pin")
def env_install_pin(
    pin: Annotated[Path, typer.Argument(help="A folder written by `mixagent env pin`.")],
    setting: SettingOpt,
    cache_dir: CacheOpt = None,
) -> None:
    """Put a pinned setting's data and base into the cache (a differing cached build is moved aside)."""
    from mixagent.env.pinned import PinError, install_pin  # noqa: PLC0415

    s = _load(setting)
    try:
        if not install_pin(pin, s, cache_dir, _say):
            _say(f"{s.name}: the cache already holds the pinned data and base")
    except PinError as e:
        fail(str(e), 2)


def _load(setting: str, device: str | None = None) -> Setting:
    try:
        return with_device(load_setting(setting), device)
    except SettingError as e:
        fail(str(e), 2)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Turn the errors a user can fix (a package that cannot be fetched, a missing checkpoint, a
    domain too small for the setting) into one red line and exit code 1, not a traceback."""
    # lazy, as every env module below: loaded when a command runs, not by `mixagent --help`
    from mixagent.env.corpus import CorpusError  # noqa: PLC0415
    from mixagent.env.sources import SourceError  # noqa: PLC0415

    try:
        yield
    except (SourceError, CorpusError, FileNotFoundError, ValueError) as e:
        fail(str(e), 1)


def _say(msg: str) -> None:
    console.print(msg, highlight=False)


@corpus_app.command("build")
def corpus_build(setting: SettingOpt = "math-tiny", cache_dir: CacheOpt = None) -> None:
    """Fetch, extract, deduplicate, split and tokenise the setting's corpus (cached)."""
    from mixagent.env.data import prepare_data  # noqa: PLC0415 - loaded when the command runs

    s = _load(setting)
    with _clear_errors():
        data = prepare_data(s, cache_dir, _say)
    _manifest_table(s, data.manifest)
    console.print(f"data folder: {data.folder}")


def _manifest_table(s: Setting, manifest: dict[str, Any]) -> None:
    field_of = {d: f for f, ds in s.fields.items() for d in ds}
    t = Table(
        title=f"corpus {manifest['corpus_hash']} / tokens {manifest['data_hash']} (vocab {manifest['vocab_size']})"
    )
    for col in ("domain", "field", "source", "version", "docs tr/ho", "bytes tr/ho", "tokens tr/ho", "sha256 (train)"):
        t.add_column(col)
    for e in manifest["domains"]:
        t.add_row(
            e["domain"],
            field_of.get(e["domain"], "-"),
            f"{e['source_kind']}:{e['source']}",
            e["version"],
            f"{e['train_docs']}/{e['heldout_docs']}",
            f"{e['train_bytes']:,}/{e['heldout_bytes']:,}",
            f"{e['train_tokens']:,}/{e['heldout_tokens']:,}",
            e["train_sha256"][:12],
        )
    console.print(t)


@corpus_app.command("show")
def corpus_show(setting: SettingOpt = "math-tiny", cache_dir: CacheOpt = None) -> None:
    """Print the manifest of an already built corpus."""
    from mixagent.env.cache import cache_root  # noqa: PLC0415 - loaded when the command runs

    s = _load(setting)
    path = cache_root(cache_dir) / "data" / s.data_hash() / "manifest.json"
    if not path.exists():
        fail(f"not built yet: run `mixagent corpus build --setting {setting}`", 1)
    _manifest_table(s, json.loads(path.read_text()))


@env_app.command("pretrain")
def env_pretrain(
    setting: SettingOpt = "math-tiny",
    plot: Annotated[Path | None, typer.Option(help="Save the pre-training loss curve here (PNG).")] = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Build the corpus and the base checkpoint (pre-trained on the source field; cached)."""
    from mixagent.env.base import base_info, build_backend  # noqa: PLC0415 - torch: only when it runs

    s = _load(setting)
    with _clear_errors():
        _, desc = build_backend(s, cache_dir, _say, progress=True)
    info = base_info(s, cache_dir)
    console.print(f"base model: {desc}")
    if info:
        fb = info["feedback"]
        console.print(
            f"pre-trained {info['steps']} steps in {info['seconds']}s; held-out field scores {fb['field_scores']}"
        )
        if plot:
            _plot_curve(info["curve"], plot, f"{s.name}: pre-training on the source field")
            console.print(f"plot saved to {plot}")


def _plot_curve(curve: list[dict[str, float]], path: Path, title: str) -> None:
    from mixagent.trajectories.plots import pyplot, save_figure  # noqa: PLC0415 - matplotlib: only for --plot

    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.plot([c["step"] for c in curve], [c["train_loss"] for c in curve])
    ax.set(title=title, xlabel="optimizer step", ylabel="train loss (nats/token)")
    fig.tight_layout()
    save_figure(fig, path)


@env_app.command("rollout")
def env_rollout(
    setting: SettingOpt = "math-tiny",
    target_share: Annotated[float, typer.Option(help="Constant share of the target field(s), 0..1.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Episode seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the raw history as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Save a plot of scores and weights here (PNG).")] = None,
    cache_dir: CacheOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Run one episode with a constant target share and print the feedback of every stage."""
    from mixagent.env.mixing_env import DataMixingEnv  # noqa: PLC0415 - torch: only when it runs

    if not 0.0 <= target_share <= 1.0:
        fail(f"--target-share: must be within [0, 1], got {target_share}", 2)
    s = _load(setting, device)
    with _clear_errors():
        env = DataMixingEnv(s, cache_dir=cache_dir, progress=True)
    space = env.space
    n_targets = len(space.fields) - 1  # the target share is split evenly over the target fields
    shares = np.array([1 - target_share if f == SOURCE_FIELD else target_share / n_targets for f in space.fields])
    weights = field_shares_to_weights(space, shares)
    _, info = env.reset(seed=seed)
    t = Table(title=f"{s.name}: constant target share {target_share} (seed {seed}); field scores in nats/token")
    for col in ("t", "step", *space.fields, "balanced", "train loss", "train s", "eval s"):
        t.add_column(col, justify="right")

    def row(info: dict[str, Any]) -> None:
        fb = info["feedback"]
        secs = env.last_stage_seconds
        t.add_row(
            str(info["t"]),
            str(fb["step"]),
            *[f"{fb['field_scores'][f]:.4f}" for f in space.fields],
            f"{info['balanced_score']:+.4f}",
            "–" if math.isnan(info["train_loss"]) else f"{info['train_loss']:.3f}",  # t = 0: nothing trained yet
            f"{secs['train']:.2f}",
            f"{secs['eval']:.2f}",
        )

    row(info)
    from tqdm.auto import tqdm  # noqa: PLC0415 - loaded when the command runs

    with tqdm(total=env.horizon, desc="episode", unit="decision") as bar:
        truncated = False
        while not truncated:
            _, _, _, truncated, info = env.step_weights(weights)
            row(info)
            bar.update(1)
            bar.set_postfix(balanced=f"{info['balanced_score']:+.4f}")
    console.print(t)
    history = env.history
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(history.model_dump_json(indent=1))
        console.print(f"history written to {out}")
    if plot:
        from mixagent.trajectories.plots import plot_history  # noqa: PLC0415 - matplotlib: only for --plot

        plot_history(history, plot, title=f"{s.name}: target share {target_share}")
        console.print(f"plot saved to {plot}")

