"""``mixagent agent …`` (train, export, evaluate) and ``mixagent trajectories generate``.

Thin shells over :mod:`.generate`, :mod:`.train`, :mod:`.export` and :mod:`.evaluate`; torch and
d3rlpy are imported inside the commands that need them. ``generate_cmd`` belongs to the
``trajectories`` group; the root CLI adds it there (generation runs the env, a floor above the
ground where the rest of that group lives).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import numpy as np
import typer

from mixagent.console import console as _console
from mixagent.console import fail
from mixagent.trajectories.environment import START_TOLERANCE

if TYPE_CHECKING:
    from mixagent.agent.runner import Executor
    from mixagent.env.setting import Setting
    from mixagent.trajectories.contract import Level

__all__ = ["agent_app", "generate_cmd"]

console = _console()
agent_app = typer.Typer(help="Train, export and evaluate mixing policies.", no_args_is_help=True)


def _check_device(settings: list[Setting], executor: str) -> None:
    """Refuse a ``--device``/``runtime.device`` this machine cannot give before anything is built, when
    the workers run here (``local``); a Ray cluster's workers resolve it on their own nodes."""
    from mixagent.env.setting import SettingError  # noqa: PLC0415

    if executor != "local" or all(s.runtime.device == "cpu" for s in settings):
        return
    from mixagent.env.backend import resolve_device  # noqa: PLC0415 - torch: only for a device other than cpu

    try:
        for s in settings:
            resolve_device(s.runtime)
    except SettingError as e:
        fail(str(e), 2)


def generate_cmd(
    setting: Annotated[str, typer.Option("--setting", "-s", help="Setting file (YAML/TOML) or a name in configs/.")],
    n: Annotated[int, typer.Option("--n", help="Trajectories the folder should hold (the plan's first N).")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder (resumed when it exists).")],
    workers: Annotated[int, typer.Option(help="Parallel workers, one env (model) each.")] = 1,
    executor: Annotated[str, typer.Option(help="'local' (process pool) or 'ray'.")] = "local",
    threads: Annotated[int, typer.Option(help="torch threads per worker (0: cores / workers).")] = 0,
    families: Annotated[str, typer.Option(help="Comma-separated schedule families (default: all built-in).")] = "",
    seed: Annotated[int, typer.Option(help="Base seed of the plan.")] = 0,
    level: Annotated[
        str, typer.Option(help="'field' or 'domain' schedules (default: the setting's action level).")
    ] = "",
    ray_address: Annotated[str, typer.Option(help="Ray cluster address (default: start a local Ray).")] = "",
    cache_dir: Annotated[Path | None, typer.Option(help="Corpus/base-model cache (default $MIXAGENT_HOME).")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar (off: one log line per trajectory).")] = True,
    start_tolerance: Annotated[float, typer.Option(
        help="Refuse runs whose first evaluation differs from the folder's by more (nats, any domain)."
    )] = START_TOLERANCE,
    adopt_corpus: Annotated[bool, typer.Option(
        "--adopt-corpus", help="Let a folder whose records predate provenance take this machine's corpus.")] = False,
    pool: Annotated[str, typer.Option(
        help="Per-run data pools: 'draw[:LOW[:HIGH]]' (caps log-uniform per domain and run), 'full' or "
             "'NAME=CAP,...' (fixed caps); default none (the full train split, as before).")] = "",
    device: Annotated[str | None, typer.Option(
        "--device", help="Where each worker's model computes: cpu, cuda or auto (cuda when available); default: "
                         "the setting's runtime.device (cpu). Under Ray a cuda worker reserves a GPU.")] = None,
) -> None:
    """Run the behaviour schedules of the plan in the real env; resumes an existing folder."""
    # lazy: the runner and the env load only when this command runs (`mixagent --help` stays light)
    from mixagent.agent.errors import RunnerError  # noqa: PLC0415
    from mixagent.agent.generate import GenerateConfig, generate  # noqa: PLC0415
    from mixagent.env.pools import PoolError, parse_pool  # noqa: PLC0415
    from mixagent.env.setting import SettingError, load_setting, with_device  # noqa: PLC0415
    from mixagent.trajectories.contract import ContractError  # noqa: PLC0415
    from mixagent.trajectories.schedules import BUILTIN_FAMILIES  # noqa: PLC0415

    if executor not in ("local", "ray"):
        fail(f"--executor: must be 'local' or 'ray', got {executor!r}", 2)
    if level not in ("", "field", "domain"):
        fail(f"--level: must be 'field' or 'domain', got {level!r}", 2)
    try:
        s = with_device(load_setting(setting), device)
    except SettingError as e:
        fail(str(e), 2)
    _check_device([s], executor)
    fams = tuple(f.strip() for f in families.split(",") if f.strip()) or BUILTIN_FAMILIES
    try:
        pool_spec = parse_pool(pool)
    except PoolError as e:
        fail(str(e), 2)
    cfg = GenerateConfig(
        out=out, n=n, families=fams, seed=seed, level=cast("Level | None", level or None), pool=pool_spec,
        workers=workers,
        threads=threads, executor=cast("Executor", executor), ray_address=ray_address or None, cache_dir=cache_dir,
        progress=progress,
        start_tolerance=start_tolerance, adopt_corpus=adopt_corpus,
    )
    try:
        report = generate(cfg, s)
    except (RunnerError, ContractError, PoolError) as e:
        fail(str(e), 1)
    per = report.seconds_per_trajectory
    mean = f"; {sum(per) / len(per):.1f} s per trajectory" if per else ""
    console.print(
        f"{report.out}: {report.already_done + report.generated}/{report.planned} planned trajectories finished "
        f"({report.generated} now, {report.already_done} before) in {report.wall_s:.0f} s{mean}"
    )


@agent_app.command("train")
def train_cmd(
    data: Annotated[list[Path], typer.Option("--data", help="Dataset folder (repeat for several settings).")],
    algo: Annotated[str, typer.Option(
        help="bc | cql | iql | td3+bc | bc+cql | bc+calql | bc+rebrac ('bc+X': an offline RL stage X that starts "
             "from a BC actor, trained in the same run or given by --warm-start; its drift from BC is bounded "
             "by the config's drift_bound)")],
    out: Annotated[Path, typer.Option("--out", help="Policy folder to write (card.json, policy.onnx, ...).")],
    config: Annotated[Path | None, typer.Option(help="YAML/JSON file of TrainConfig fields.")] = None,
    encoder: Annotated[str | None, typer.Option(help="mlp | transformer (overrides the config).")] = None,
    level: Annotated[str | None, typer.Option(
        help="field | domain: 'domain' trains the domain-set agent, one artifact for any domain space "
             "(bc only; overrides the config).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (overrides the config).")] = None,
    warm_start: Annotated[Path | None, typer.Option(
        "--warm-start", help="bc+X: the BC artifact to start from (trained with the same action map, encoder and "
                             "level; deterministic for bc+rebrac: --config with bc_policy: deterministic).")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Train a mixing policy offline on real trajectories and export it as an artifact (field level:
    d3rlpy; domain level: the domain-set network in torch). The card's ``stage`` says which stage made
    the network (``bc`` or ``offline-rl``) and ``warm_start`` what an RL stage started from."""
    # lazy: d3rlpy and torch (the train extra) load only when this command runs
    from mixagent.agent.dataset import DatasetError  # noqa: PLC0415
    from mixagent.agent.train import load_config, train  # noqa: PLC0415
    from mixagent.trajectories.contract import ContractError  # noqa: PLC0415

    try:
        cfg = load_config(config, encoder=encoder, level=level, seed=seed,
                          warm_start=str(warm_start) if warm_start is not None else None)
        report = train(data, algo, out, cfg, progress=progress)
    except (DatasetError, ContractError) as e:
        fail(str(e), 2)
        return
    m = report.metrics
    console.print(f"{out}: {report.card.ref} ({report.card.algorithm}) trained on {report.train_trajectories} "
                  f"trajectories ({report.train_transitions} transitions), "
                  f"validated on {report.validation_trajectories}",
                  highlight=False)
    console.print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report.seconds.items()), highlight=False)
    console.print("metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(m.items())), highlight=False)


@agent_app.command("regmix")
def regmix_cmd(
    data: Annotated[list[Path], typer.Option("--data", help="Dataset folder(s) holding static runs of one space.")],
    out: Annotated[Path, typer.Option("--out", help="Artifact folder to write (card.json, mixtures.json, ...).")],
    name: Annotated[str, typer.Option(help="Policy name in the card.")] = "regmix",
    version: Annotated[str, typer.Option(help="Policy version in the card.")] = "v1",
    candidates: Annotated[int, typer.Option(help="Dirichlet candidates scored per objective.")] = 100_000,
    top: Annotated[int, typer.Option(help="The best predicted candidates averaged into the mixture.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the fits and the candidates.")] = 0,
) -> None:
    """Fit RegMix (LightGBM over static proxy runs) and write its static-mixture artifact."""
    # lazy: lightgbm (the methods extra) loads only when this command runs
    from mixagent.agent.dataset import DatasetError  # noqa: PLC0415
    from mixagent.trajectories.contract import ContractError  # noqa: PLC0415

    if candidates < top or top < 1:
        fail(f"--top: must be between 1 and --candidates ({candidates}), got {top}", 2)
    try:
        from mixagent.agent.regmix import fit_regmix  # noqa: PLC0415

        card = fit_regmix(data, out, name, version, candidates, top, seed)
    except ImportError as e:
        fail(f"regmix: {e.name or 'lightgbm'} is not installed (pip install 'mixagent[methods]')", 2)
    except (DatasetError, ContractError) as e:
        fail(str(e), 2)
    console.print(f"{out}: {card.ref} ({card.algorithm}) fitted on {card.metrics['data/static_runs']:.0f} static "
                  f"runs in {card.metrics['seconds/fit']:.1f} s", highlight=False)


@agent_app.command("causalmix")
def causalmix_cmd(
    data: Annotated[list[Path], typer.Option("--data", help="Dataset folder(s) of pooled static runs of one setting.")],
    out: Annotated[Path, typer.Option("--out", help="Artifact folder to write (card.json, mixtures.json, ...).")],
    pool: Annotated[str, typer.Option(help="The target pool: 'full' or 'NAME=CAP,...' (other domains full).")] = "full",
    name: Annotated[str, typer.Option(help="Policy name in the card.")] = "causalmix",
    version: Annotated[str, typer.Option(help="Policy version in the card.")] = "v1",
    seed: Annotated[int, typer.Option(help="Seed of the forests and their nuisance models.")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(help="Corpus cache (default $MIXAGENT_HOME).")] = None,
) -> None:
    """Fit CausalMix (causal forest over pooled static proxy runs) for a target pool and write its
    static-mixture artifact."""
    # lazy: econml and lightgbm (the methods extra) load only when this command runs
    from mixagent.agent.dataset import DatasetError  # noqa: PLC0415
    from mixagent.env.pools import PoolError, parse_pool  # noqa: PLC0415
    from mixagent.trajectories.contract import ContractError  # noqa: PLC0415

    try:
        target = parse_pool(pool)
        from mixagent.agent.causalmix import fit_causalmix  # noqa: PLC0415

        card = fit_causalmix(data, out, target, name, version, seed, cache_dir)
    except ImportError as e:
        fail(f"causalmix: {e.name or 'econml'} is not installed (pip install 'mixagent[methods]')", 2)
    except (DatasetError, ContractError, PoolError) as e:
        fail(str(e), 2)
    console.print(f"{out}: {card.ref} ({card.algorithm}) fitted on {card.metrics['data/static_runs']:.0f} pooled "
                  f"static runs in {card.metrics['seconds/fit']:.1f} s", highlight=False)


@agent_app.command("iterate")
def iterate_cmd(
    agent: Annotated[Path, typer.Option("--agent", help="The behaviour policy: the current agent's artifact.")],
    round_: Annotated[int, typer.Option("--round", help="Round number r >= 1 (env seeds 10000·r + i).")],
    n: Annotated[int, typer.Option("--n", help="Trajectories of this round, over all settings (round-robin).")],
    data: Annotated[list[Path], typer.Option(
        "--data", help="Training folders the round joins: the base data and earlier rounds (repeat).")],
    settings: Annotated[list[str] | None, typer.Option(
        "--setting", help="Training setting (repeat; default math-tiny and code-tiny).")] = None,
    data_root: Annotated[Path, typer.Option(help="Where the round's folders closed-loop-r<r>-<setting> go.")] = Path(
        "data/trajectories"),
    out: Annotated[Path | None, typer.Option("--out", help="Retrained agent (omit: run the round only).")] = None,
    algo: Annotated[str, typer.Option(help="bc | cql | bc+cql | iql | td3+bc")] = "bc",
    config: Annotated[Path | None, typer.Option(help="YAML/JSON file of TrainConfig fields.")] = None,
    sigma_min: Annotated[float, typer.Option(help="Smallest logit noise σ of a run (drawn per run).")] = 0.05,
    sigma_max: Annotated[float, typer.Option(help="Largest logit noise σ of a run.")] = 0.3,
    start_sigma: Annotated[float, typer.Option(help="Spread of a perturbed start's logit offset.")] = 1.0,
    start_fraction: Annotated[float, typer.Option(help="Share of runs with a perturbed start.")] = 0.5,
    select_seeds: Annotated[int, typer.Option(
        help="Selection rollouts (seeds 5000..) of behaviour vs retrained agent; 0: none.")] = 0,
    select_objectives: Annotated[list[str] | None, typer.Option(
        "--select-objective", help="Objective of the selection rollouts, spread_penalty=X[,FIELD=W,..] (repeat; "
                                   "default 0, 0.5 and 0.9).")] = None,
    workers: Annotated[int, typer.Option(help="Parallel workers, one env each.")] = 1,
    threads: Annotated[int, typer.Option(help="torch threads per worker (0: cores / workers).")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(help="Corpus/base-model cache (default $MIXAGENT_HOME).")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """A closed-loop round: the agent drives the training settings with exploration, its runs go to
    folders of their own, and the next agent trains on the union (agent/iterate.py)."""
    # lazy: the runner, the env, torch and d3rlpy load only when this command runs
    from mixagent.agent.catalogue import parse_objective  # noqa: PLC0415
    from mixagent.agent.dataset import DatasetError  # noqa: PLC0415
    from mixagent.agent.iterate import SELECT_OBJECTIVES, IterateConfig, iterate  # noqa: PLC0415
    from mixagent.agent.runner import RunnerConfig, RunnerError  # noqa: PLC0415
    from mixagent.agent.train import load_config  # noqa: PLC0415
    from mixagent.env.setting import SettingError, load_setting  # noqa: PLC0415
    from mixagent.trajectories.contract import ContractError  # noqa: PLC0415

    try:
        cfg = IterateConfig(agent=agent, round=round_, n=n, data=tuple(data), data_root=data_root, out=out, algo=algo,
                            sigma_range=(sigma_min, sigma_max), start_sigma=start_sigma, start_fraction=start_fraction,
                            select_seeds=select_seeds,
                            select_objectives=tuple(parse_objective(o) for o in select_objectives or ())
                            or SELECT_OBJECTIVES,
                            runner=RunnerConfig(workers=workers, threads=threads, cache_dir=cache_dir,
                                                progress=progress))
        report = iterate(cfg, [load_setting(s) for s in settings or ["math-tiny", "code-tiny"]],
                         load_config(config) if out is not None else None, progress=progress)
    except (ContractError, SettingError, RunnerError, DatasetError) as e:
        fail(str(e), 2)
    for folder, r in zip(report.folders, report.runs, strict=True):
        console.print(f"{folder}: {r.already_done + r.generated}/{r.planned} runs ({r.generated} now)", highlight=False)
    if report.train is not None:
        console.print(f"{out}: {report.train.card.ref} ({report.train.card.algorithm}) trained on "
                      f"{report.train.train_trajectories} trajectories", highlight=False)
    console.print("CPU seconds: " + ", ".join(f"{k} {v:.0f} (wall {report.wall_seconds[k]:.0f})"
                                             for k, v in report.cpu_seconds.items()), highlight=False)


@agent_app.command("export")
def export_cmd(
    policy: Annotated[Path, typer.Argument(help="A trained policy folder (holds learner.d3 and card.json).")],
    out: Annotated[Path, typer.Option("--out", help="Artifact folder to write.")],
    name: Annotated[str | None, typer.Option(help="Policy name in the new card.")] = None,
    version: Annotated[str | None, typer.Option(help="Policy version in the new card.")] = None,
) -> None:
    """Re-export a trained policy (e.g. under another name/version, to bundle it): card + ONNX."""
    # lazy: d3rlpy and torch (the train extra) load only when this command runs
    import d3rlpy  # noqa: PLC0415

    import mixagent.agent.networks  # noqa: F401, PLC0415 - registers the Transformer encoder d3rlpy must find by name
    from mixagent.agent.card import ArtifactError, PolicyCard  # noqa: PLC0415
    from mixagent.agent.export import write_artifact  # noqa: PLC0415
    from mixagent.agent.train import quiet_d3rlpy  # noqa: PLC0415

    quiet_d3rlpy()
    learner_path, card_path = policy / "learner.d3", policy / "card.json"
    if not learner_path.is_file() or not card_path.is_file():
        fail(f"{policy}: not a trained policy folder (needs learner.d3 and card.json)", 2)
    card = PolicyCard.model_validate_json(card_path.read_text())
    update = {k: v for k, v in {"name": name, "version": version}.items() if v is not None}
    card = card.model_copy(update={**update, "created_at": ""})
    learner = d3rlpy.load_learnable(str(learner_path))
    lo, hi = np.asarray(card.observation_low), np.asarray(card.observation_high)
    probe = np.random.default_rng(0).uniform(lo, hi, size=(256, len(lo))).astype(np.float32)
    try:
        card = write_artifact(learner, out, card, probe)
    except ArtifactError as e:
        fail(str(e))
    for extra in ("training.json",):
        if (policy / extra).is_file():
            (out / extra).write_text((policy / extra).read_text())
    console.print(f"{out}: {card.ref} exported ({json.dumps(card.metrics.get('export/max_abs_diff_onnx_vs_torch'))} "
                  "max |onnx - torch|)", highlight=False)


@agent_app.command("evaluate")
def evaluate_cmd(
    policies: Annotated[list[str], typer.Option(
        "--policies", help="default | baselines | hand | grid | trainer-side | NAME[:k=v,..] | [LABEL=]ARTIFACT_DIR "
                            "(repeat; trainer-side: tandem, aioli, which act inside the interval)."
    )],
    settings: Annotated[list[str], typer.Option("--settings", help="Setting names or files (repeat).")],
    out: Annotated[Path, typer.Option("--out", help="Evaluation folder (resumed when it exists).")],
    objectives: Annotated[list[str] | None, typer.Option(
        "--objectives", help="default | spread_penalty=X[,FIELD=W,..] (repeat)."
    )] = None,
    seeds: Annotated[int, typer.Option(help="Paired comparison seeds.")] = 5,
    selection_seeds: Annotated[int, typer.Option(help="Seeds that choose the best grid point.")] = 3,
    reference: Annotated[str, typer.Option(help="Label of the policy differences are taken against.")] = "uniform",
    grid_compare: Annotated[str, typer.Option(
        help="'all': every grid point also runs on the comparison seeds; 'selected': only the point chosen "
             "on the selection seeds does (a third of the grid's cost)."
    )] = "all",
    workers: Annotated[int, typer.Option(help="Parallel workers, one env each.")] = 1,
    threads: Annotated[int, typer.Option(help="torch threads per worker (0: cores / workers).")] = 0,
    executor: Annotated[str, typer.Option(help="'local' or 'ray'.")] = "local",
    cache_dir: Annotated[Path | None, typer.Option(help="Corpus/base-model cache (default $MIXAGENT_HOME).")] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar (off: one log line per run).")] = True,
    device: Annotated[str | None, typer.Option(
        "--device", help="Where each worker's model computes: cpu, cuda or auto; default: each setting's "
                         "runtime.device (cpu).")] = None,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Report on the runs already made; run nothing.")
    ] = False,
) -> None:
    """Run policies in the real env on paired seeds; write report.md, results.json and plots."""
    # lazy: the runner, the env and scipy load only when this command runs
    from mixagent.agent.catalogue import EvaluationConfig, parse_objective, parse_policies  # noqa: PLC0415
    from mixagent.agent.evaluate import evaluate  # noqa: PLC0415
    from mixagent.agent.runner import RunnerConfig, RunnerError  # noqa: PLC0415
    from mixagent.env.setting import SettingError, load_setting, with_device  # noqa: PLC0415
    from mixagent.trajectories.contract import ContractError  # noqa: PLC0415

    try:
        loaded = [with_device(load_setting(s), device) for s in settings]
    except SettingError as e:
        fail(str(e), 2)
    _check_device(loaded, executor)
    try:
        cfg = EvaluationConfig(
            out=out, policies=tuple(parse_policies(policies)), settings=tuple(loaded),
            objectives=tuple(parse_objective(o) for o in (objectives or ["default"])), seeds=seeds,
            selection_seeds=selection_seeds, reference=reference,
            grid_compare=cast(Literal["all", "selected"], grid_compare),  # checked by cfg.check()
            runner=RunnerConfig(workers=workers, threads=threads, executor=cast("Executor", executor),
                                cache_dir=cache_dir, progress=progress),
        )
        evaluate(cfg, run=not report_only)
    except (ContractError, SettingError, RunnerError) as e:
        fail(str(e), 2)
    console.print(f"report: {out / 'report.md'}; results: {out / 'results.json'}; plots: {out / 'plots'}")
