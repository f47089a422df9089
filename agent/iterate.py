"""Closed-loop rounds: the current agent drives the training settings, explores around its own
choices, and the next agent is trained on the union of the old data and its runs.

    mixagent agent iterate --agent agent/artifacts/agent --round 1 --n 64 \\
        --setting math-tiny --setting code-tiny \\
        --data data/trajectories/math-tiny --data data/trajectories/code-tiny \\
        --algo bc --out runs/policies/agent-r1 --select-seeds 10 --workers 2

Why: every earlier trajectory was drawn by open-loop schedules and noisy baselines, never by the
agent, so nothing shows it the states its own choices lead to, nor how to recover from them
(BREMEN-style iteration: several rounds, each retrained from scratch on everything so far).

One round (:func:`iterate`), three phases, each printing its CPU time (this process and its
finished workers, ``resource.getrusage``):

1. **rounds**: ``n`` trajectories, item ``i`` on setting ``settings[i mod S]`` (round-robin), in
   the folder ``<data_root>/closed-loop-r<round>-<setting>`` of its own (never a training folder;
   resumable like every runner folder). The behaviour artifact is copied into
   ``<folder>/behaviour/`` first, so the records stay rebuildable when the shipped agent changes.
   Each run is the agent as served (its guard and fallback included) for an objective drawn from
   its card's range, with exploration (the ``closed_loop`` family, :mod:`mixagent.agent.closed_loop`):

   * **logit noise** on every mixture, ``softmax(log shares + N(0, σ²))`` per field, σ drawn per run
     uniformly from :data:`SIGMA_RANGE` = [0.05, 0.3] (around a target share of 0.3, σ = 0.3 moves it
     by ±0.09 per stage). The low end keeps about half the runs as smooth as behaviour cloning
     imitates (``TrainConfig.bc_max_roughness`` = 0.07 mean change of the target share per stage: σ
     adds about 0.33·σ there), the high end shows offline RL actions around the agent's own;
   * **perturbed starts** on every other item: for the first ``k ~ U{1, …, T/2}`` stages its own
     choices are replayed shifted by one logit offset ``δ_f ~ N(0, σ_start²)`` (:data:`START_SIGMA`
     = 1.0: within one sd, a share of 0.3 becomes 0.1–0.65), so that when it takes over, its past-mixture
     features (what it reacts to most, ``bench/feedback_probe.py``) hold its own mixtures displaced.

   The header names the behaviour (``schedule = "closed_loop"``; ``schedule_params``: the artifact
   folder as run, its digest, the card's ``name@version``, σ, the noise seed and the start
   perturbation), so :func:`~mixagent.agent.closed_loop.record_policy` rebuilds every mixture from
   the copied artifact.
2. **training**: :func:`~mixagent.agent.train.train` on ``--data`` (the base folders and earlier
   rounds) plus this round's folders.
3. **selection** (``select_seeds`` ≥ 2): the behaviour agent and the retrained one on the training
   settings, on seeds :data:`SELECT_SEED`.. (paired, the same every round), with the harness
   (:func:`~mixagent.agent.evaluate.evaluate`, report in ``<out>/selection``).

Seeds are training seeds: round ``r`` item ``i`` runs on env seed ``ROUND_SEED·r + i`` (round 1:
10000–19999), selection on 5000–5999; no benchmark seed (comparison 1000–1009, selection
2000–2002, the training study's 3000..) is ever used (:func:`check_training_seed`).

Refused before anything runs, with the reason: a behaviour card that is not a field-level network
over this package's encoder (the training data's), or whose β, ε or level differ from a setting's; a
round folder that holds another behaviour, encoder, action map or level (a round folder holds one)
or records of another setting hash; a round folder among ``--data``. Nothing already there is
rewritten: records are only added, and an existing behaviour copy must have the same digest.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mixagent.agent.card import PolicyCard, artifact_digest, read_card
from mixagent.agent.catalogue import COMPARE_SEED
from mixagent.agent.catalogue import SELECT_SEED as BENCHMARK_SELECT_SEED
from mixagent.agent.closed_loop import BEHAVIOUR_DIR, FAMILY
from mixagent.agent.errors import RunnerError
from mixagent.agent.runner import EpisodeSpec, FolderPin, RunnerConfig, RunReport, run_episodes
from mixagent.trajectories.contract import SCHEMA_VERSION, Objective, stable_hash
from mixagent.trajectories.encoding import ENCODER_VERSION
from mixagent.trajectories.storage import FileStore, read_json_object

if TYPE_CHECKING:
    from mixagent.agent.train import TrainConfig, TrainReport
    from mixagent.env.setting import Setting

__all__ = [
    "SIGMA_RANGE",
    "START_SIGMA",
    "START_FRACTION",
    "ROUND_SEED",
    "SELECT_SEED",
    "SELECT_OBJECTIVES",
    "PIN_FILE",
    "IterateConfig",
    "IterateReport",
    "check_training_seed",
    "round_folder",
    "plan_round",
    "cpu_seconds",
    "iterate",
]

SIGMA_RANGE = (0.05, 0.3)
"""Default range of a run's logit noise σ on every mixture (see the module docstring)."""
START_SIGMA = 1.0
"""Default spread of the per-field logit offset of a perturbed start."""
START_FRACTION = 0.5
"""Default share of a round's items with a perturbed start (every other item at 0.5)."""
ROUND_SEED = 10_000
"""Round ``r`` item ``i`` runs on env seed ``ROUND_SEED·r + i`` (``i < ROUND_SEED``)."""
SELECT_SEED = 5_000
"""Selection rollouts of a round run on seeds ``SELECT_SEED + j`` (the same every round: paired)."""
SELECT_OBJECTIVES = (Objective(spread_penalty=0.0), Objective(spread_penalty=0.5), Objective(spread_penalty=0.9))
"""The objectives selection rollouts run under by default (the benchmark's λ values)."""
PIN_FILE = "generate.json"
"""What a round folder holds (setting, family, round, behaviour and its digest, encoder, action map)."""
_RESERVED = ((COMPARE_SEED, COMPARE_SEED + 1000, "benchmark comparison"),
             (BENCHMARK_SELECT_SEED, BENCHMARK_SELECT_SEED + 1000, "benchmark selection"),
             (3000, 4000, "the training study's rollout"))


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished (waited-for) children, user + system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def check_training_seed(seed: int) -> None:
    """A :class:`RunnerError` for a seed in a benchmark's (or the training study's) block."""
    for lo, hi, what in _RESERVED:
        if lo <= seed < hi:
            raise RunnerError(f"seed {seed} lies in the {what} seeds {lo}..{hi - 1}; closed-loop rounds and their "
                              "selection use training seeds only")


# ----- a round ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IterateConfig:
    """One closed-loop round: what drives which settings, where records go, how the next agent trains."""

    agent: Path
    """The behaviour policy: the current agent's artifact folder."""
    round: int
    """Round number r ≥ 1 (seeds ``ROUND_SEED·r + i``; folders ``closed-loop-r<r>-<setting>``)."""
    n: int
    """Trajectories this round should hold, over all settings (round-robin)."""
    data: tuple[Path, ...]
    """Training folders the round's records join: the base data and earlier rounds."""
    data_root: Path = Path("data/trajectories")
    """Where the round's folders are made."""
    out: Path | None = None
    """Where the retrained agent is written (None: no training, the rounds only)."""
    algo: str = "bc"
    """The training algorithm (``mixagent agent train --algo``)."""
    sigma_range: tuple[float, float] = SIGMA_RANGE
    """Each run's logit noise σ on every mixture is drawn uniformly from this range."""
    start_sigma: float = START_SIGMA
    """Spread of a perturbed start's per-field logit offset."""
    start_fraction: float = START_FRACTION
    """Share of items with a perturbed start."""
    select_seeds: int = 0
    """Selection rollouts per setting and objective after training (0: none; else at least 2)."""
    select_objectives: tuple[Objective, ...] = SELECT_OBJECTIVES
    """The objectives the selection rollouts are scored and run under."""
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    """How the episodes run (workers, threads, cache)."""

    def check(self) -> None:
        if self.round < 1:
            raise RunnerError(f"--round: must be >= 1, got {self.round}")
        if not 0 <= self.n <= ROUND_SEED:
            raise RunnerError(f"--n: must be in 0..{ROUND_SEED}, got {self.n}")
        lo, hi = self.sigma_range
        if not (0 <= lo <= hi and math.isfinite(hi)):
            raise RunnerError(f"--sigma-min, --sigma-max: need finite 0 <= min <= max, got {lo}, {hi}")
        if not (self.start_sigma >= 0 and math.isfinite(self.start_sigma)):
            raise RunnerError(f"--start-sigma: must be finite and >= 0, got {self.start_sigma}")
        if not 0 <= self.start_fraction <= 1:
            raise RunnerError(f"--start-fraction: must be in [0, 1], got {self.start_fraction}")
        if self.select_seeds == 1 or self.select_seeds < 0:
            raise RunnerError(f"--select-seeds: 0 (none) or at least 2 paired seeds, got {self.select_seeds}")


@dataclass
class IterateReport:
    """What a round did: its folders and runs, the trained agent, and CPU seconds per phase."""

    folders: list[Path]
    runs: list[RunReport]
    cpu_seconds: dict[str, float]
    wall_seconds: dict[str, float]
    train: TrainReport | None = None
    selection: list[dict[str, Any]] | None = None


def round_folder(data_root: str | Path, round_: int, setting: Setting) -> Path:
    return Path(data_root) / f"closed-loop-r{round_}-{setting.name}"


def _check_behaviour(card: PolicyCard, folder: Path, settings: Sequence[Setting]) -> None:
    if card.kind != "onnx" or card.domain_set or card.action.level != "field":
        raise RunnerError(f"--agent: {folder} ({card.ref}) is not a field-level network (kind {card.kind}, encoder "
                          f"{card.encoder_version}, action level {card.action.level}); closed-loop rounds drive the "
                          "field-level agent")
    if card.encoder_version != ENCODER_VERSION:
        raise RunnerError(f"--agent: {card.ref} reads encoder {card.encoder_version}, the training data are encoded "
                          f"with {ENCODER_VERSION}")
    for s in settings:
        a = s.action
        if (a.level, a.beta, a.epsilon) != (card.action.level, card.action.beta, card.action.epsilon):
            raise RunnerError(f"--agent: {card.ref} acts at level {card.action.level} with beta={card.action.beta}, "
                              f"epsilon={card.action.epsilon}; setting {s.name} at level {a.level} with beta={a.beta}, "
                              f"epsilon={a.epsilon}")
        problem = card.space_problem(s.space)
        if problem:
            raise RunnerError(f"--setting: {s.name}: {problem}")


def _pinned(cfg: IterateConfig, card: PolicyCard, digest: str) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "families": [FAMILY], "round": cfg.round, "level": card.action.level,
            "behaviour": card.ref, "behaviour_digest": digest, "encoder_version": card.encoder_version,
            "action_map": card.action_map}


def _check_round_folder(folder: Path, setting: Setting, pinned: dict[str, Any]) -> None:
    """Refuse (naming the reason) a round folder made by another behaviour or for another setting."""
    if not folder.exists():
        return
    pin_path = folder / PIN_FILE
    if pin_path.is_file():
        old = read_json_object(pin_path)
        for key, value in {"setting_name": setting.name, "setting_hash": setting.hash(), **pinned}.items():
            if old.get(key) != value:
                raise RunnerError(f"{pin_path}: {key} is {old.get(key)!r} in this round folder but {value!r} in this "
                                  "round (a round folder holds one behaviour, encoder, action map and setting); use "
                                  "another --round or --data-root")
    for s in FileStore(folder).load_all() if (folder / "records").is_dir() else []:
        if s.trajectory.header.setting_hash != setting.hash():
            raise RunnerError(f"{s.path}: a record of setting hash {s.trajectory.header.setting_hash}, but this "
                              f"round's setting {setting.name} has hash {setting.hash()}")


def _copy_behaviour(src: Path, folder: Path, digest: str) -> Path:
    dest = folder / BEHAVIOUR_DIR
    if dest.exists():
        got = artifact_digest(dest)
        if got != digest:
            raise RunnerError(f"{dest}: holds a behaviour artifact of digest {got}, this round's has {digest}; "
                              "nothing is overwritten")
        return dest
    tmp = folder / f".{BEHAVIOUR_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and p.suffix in (".json", ".onnx"):
            shutil.copy2(p, tmp / p.name)
    tmp.rename(dest)
    return dest


def plan_round(cfg: IterateConfig, settings: Sequence[Setting], card: PolicyCard, digest: str,
               artifact: dict[str, Path]) -> dict[str, list[EpisodeSpec]]:
    """The round's episodes by setting name: item ``i`` on ``settings[i mod S]``, env seed
    ``ROUND_SEED·round + i``, and its objective, noise seed and start perturbation drawn from
    ``SeedSequence([round, i])`` (deterministic: a rerun plans the same records)."""
    plans: dict[str, list[EpisodeSpec]] = {s.name: [] for s in settings}
    for i in range(cfg.n):
        s = settings[i % len(settings)]
        seed = ROUND_SEED * cfg.round + i
        check_training_seed(seed)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.round, i]))
        objective = card.objective_range.sample(rng, s.space.fields) if card.objective_range else s.objective
        sigma = round(float(rng.uniform(*cfg.sigma_range)), 4)
        # exactly a start_fraction of every prefix of the plan, spread evenly (every other item at 0.5)
        perturbed = math.floor((i + 1) * cfg.start_fraction) > math.floor(i * cfg.start_fraction)
        start = int(rng.integers(1, s.cpt.horizon // 2 + 1)) if perturbed else 0
        offset = [round(float(x), 4) for x in rng.normal(0, cfg.start_sigma, len(s.space.fields))] if perturbed else []
        params = {"level": "field", "artifact": str(artifact[s.name]), "artifact_digest": digest, "behaviour": card.ref,
                  "sigma": sigma, "seed": int(rng.integers(2**31)), "start_stages": start, "start_offset": offset}
        key = {"setting": s.hash(), "params": params | {"artifact": ""}, "seed": seed,
               "objective": objective.model_dump(mode="json")}  # the id does not depend on where the copy lies
        plans[s.name].append(EpisodeSpec(f"{FAMILY}-{stable_hash(key)[:12]}", FAMILY, params, seed, index=i,
                                         objective=objective))
    return plans


def _timed(phase: str, cpu: dict[str, float], wall: dict[str, float], t0: tuple[float, float]) -> None:
    cpu[phase] = cpu_seconds() - t0[0]
    wall[phase] = time.perf_counter() - t0[1]


def iterate(cfg: IterateConfig, settings: Sequence[Setting], train_config: TrainConfig | None = None,
            progress: bool = True) -> IterateReport:
    """Run (or resume) one closed-loop round, then train and select (see the module docstring)."""
    cfg.check()
    if not settings:
        raise RunnerError("--setting: at least one training setting is needed")
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise RunnerError(f"--setting: a setting is named twice in {names}")
    card = read_card(cfg.agent)
    _check_behaviour(card, Path(cfg.agent), settings)
    digest = artifact_digest(cfg.agent)
    pinned = _pinned(cfg, card, digest)
    folders = {s.name: round_folder(cfg.data_root, cfg.round, s) for s in settings}
    data = [Path(d) for d in cfg.data]
    for name, folder in folders.items():
        if any(folder.resolve() == d.resolve() for d in data):
            raise RunnerError(f"--data: {folder} is this round's own folder for {name}; a round never writes into "
                              "a training folder (give the earlier rounds and the base data)")
    for s in settings:  # every refusal before anything is written
        _check_round_folder(folders[s.name], s, pinned)
    if cfg.select_seeds:
        for j in range(cfg.select_seeds):
            check_training_seed(SELECT_SEED + j)
    cpu: dict[str, float] = {}
    wall: dict[str, float] = {}
    t0 = (cpu_seconds(), time.perf_counter())
    artifacts = {s.name: _copy_behaviour(Path(cfg.agent), folders[s.name], digest) for s in settings}
    plans = plan_round(cfg, settings, card, digest, artifacts)
    runs = []
    for s in settings:
        pin = FolderPin(PIN_FILE, pinned=pinned, info={"n": len(plans[s.name]), "workers": cfg.runner.workers},
                        admitted=frozenset(e.run_id for e in plans[s.name]),
                        admitted_what=f"round {cfg.round}'s plan for {s.name} ({len(plans[s.name])} items)")
        runs.append(run_episodes(s, plans[s.name], folders[s.name], cfg.runner, pin=pin,
                                 desc=f"round {cfg.round} {s.name}"))
    _timed("rounds", cpu, wall, t0)
    report = IterateReport(list(folders.values()), runs, cpu, wall)
    if cfg.out is None:
        return report
    from mixagent.agent.dataset import load_runs  # noqa: PLC0415
    from mixagent.agent.train import train  # noqa: PLC0415

    union = [*data, *folders.values()]
    _, held = load_runs(union)
    base = {d.setting_hash for d in held[: len(data)]}
    for d in held[len(data):]:
        if base and d.setting_hash not in base:
            raise RunnerError(f"--data: round folder {d.folder} holds records of setting hash {d.setting_hash}, which "
                              f"no training folder has ({sorted(base)})")
    t0 = (cpu_seconds(), time.perf_counter())
    report.train = train(union, cfg.algo, cfg.out, train_config, progress=progress)
    _timed("training", cpu, wall, t0)
    if cfg.select_seeds:
        t0 = (cpu_seconds(), time.perf_counter())
        report.selection = _select(cfg, settings)
        _timed("selection", cpu, wall, t0)
    # the round goes into training.json, which no artifact digest reads (a .json file of its own would
    # change the retrained agent's digest, and with it the names of its runs, whenever it is rewritten)
    log = cfg.out / "training.json"
    log.write_text(json.dumps({**json.loads(log.read_text()), "closed_loop_round": {
        "round": cfg.round, "behaviour": card.ref, "behaviour_digest": digest, "algo": cfg.algo,
        "data": [str(d) for d in union], "cpu_seconds": cpu, "wall_seconds": wall,
        "runs": {s.name: r.already_done + r.generated for s, r in zip(settings, runs, strict=True)},
    }}, indent=1, sort_keys=True) + "\n")
    return report


def _select(cfg: IterateConfig, settings: Sequence[Setting]) -> list[dict[str, Any]]:
    from mixagent.agent.catalogue import EvaluationConfig, parse_policies  # noqa: PLC0415
    from mixagent.agent.evaluate import evaluate  # noqa: PLC0415

    assert cfg.out is not None
    policies = parse_policies([f"behaviour={cfg.agent}", f"retrained={cfg.out}"])
    ecfg = EvaluationConfig(out=cfg.out / "selection", policies=tuple(policies), settings=tuple(settings),
                            objectives=cfg.select_objectives, seeds=cfg.select_seeds, first_seed=SELECT_SEED,
                            selection_seeds=0, reference="behaviour", runner=replace(cfg.runner),
                            command=f"mixagent agent iterate --round {cfg.round} (selection)")
    return evaluate(ecfg)
