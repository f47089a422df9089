"""The evaluation harness: policies x settings x objectives on paired seeds, with intervals.

    mixagent agent evaluate --policies default agent/artifacts/agent --settings math-tiny docs-tiny \\
        --objectives spread_penalty=0.5 spread_penalty=0.2 --seeds 5 --selection-seeds 3 \\
        --workers 2 --out runs/eval

Every policy runs in the real env (:mod:`mixagent.agent.runner`, the same loop that generates the
training data) on the same seeds: comparison seed i is ``COMPARE_SEED + i`` for every policy, so
differences are paired. Baselines, hand schedules and the fixed-share grid ignore the objective:
each runs once per seed and is scored under every objective (the raw feedback is stored). A
learned policy reads the objective, so it runs once per (objective, seed). Open-loop policies whose
mixtures coincide (e.g. ``uniform`` and ``prior`` when all priors are equal) share one run.

The best grid point is chosen on *selection* seeds (``SELECT_SEED + j``) that no comparison uses:
the hindsight maximum over 11 noisy means is biased upward. The best hand schedule is the
hindsight best on the comparison seeds (which favours the hand schedules, not the agent).

Outputs in ``--out``: ``runs/<setting>/`` (every run as a trajectory record; resumable),
``report.md`` (per setting and objective: final per-field gains, B mean ± 95% interval, paired
differences with 95% intervals against the reference, the best hand schedule and the selected grid
point, learned policies against each other, and whether each learned policy meets the goals),
``results.json``, and plots
(``plots/<setting>-shares.png``: target share over time per policy; ``plots/<setting>-<objective>-scores.png``:
B over time).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mixagent.agent.registry import build_policy, get_family
from mixagent.agent.runner import Episode, RunnerConfig, RunnerError, run_episodes
from mixagent.env.setting import Setting
from mixagent.trajectories.contract import ContractError, Objective, Trajectory, stable_hash
from mixagent.trajectories.encoding import balanced_scores, relative_gains
from mixagent.trajectories.plots import pyplot, save_figure, target_share
from mixagent.trajectories.policy import PolicyContext
from mixagent.trajectories.schedules import CONSTANT_GRID, StaticSchedule
from mixagent.trajectories.storage import FileStore, StoredTrajectory, read_json_object, write_json_atomic

__all__ = [
    "COMPARE_SEED",
    "SELECT_SEED",
    "PolicySpec",
    "EvaluationConfig",
    "parse_policies",
    "parse_objective",
    "objective_key",
    "plan_setting",
    "evaluate",
    "summarise_setting",
    "paired_interval",
    "mean_interval",
]

COMPARE_SEED = 1000
"""Comparison seed i is ``COMPARE_SEED + i`` (fresh: generation plans draw 32-bit seeds from
``SeedSequence``, evaluation never reuses them)."""
SELECT_SEED = 2000
"""Selection seed j (for choosing the best grid point) is ``SELECT_SEED + j``."""
GRID_TOLERANCE = 0.002
"""Goal: a learned policy's paired difference to the selected grid point has a lower bound above -this."""

Group = Literal["learned", "baseline", "hand", "grid"]


@dataclass(frozen=True)
class PolicySpec:
    """One policy of an evaluation: a ``mixagent.policies`` name with parameters, or an artifact."""

    label: str
    policy: str
    params: dict[str, Any]
    group: Group
    artifact: str | None = None
    fixed_objective: Objective | None = None
    """A learned policy trained for one objective only acts for that one, whatever the run's."""

    @property
    def learned(self) -> bool:
        return self.artifact is not None

    @property
    def per_objective(self) -> bool:
        """Runs once per evaluated objective (a learned policy that reads the objective)."""
        return self.learned and self.fixed_objective is None

    def run_key(self, objective: Objective) -> str | None:
        return objective_key(objective) if self.per_objective else None

    def digest(self) -> str:
        if self.artifact is None:
            return stable_hash({"policy": self.policy, "params": self.params})
        folder = Path(self.artifact)
        files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".onnx") and p.name != "training.json")
        return stable_hash({p.name: _file_hash(p) for p in files})


def _file_hash(path: Path) -> str:
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


BASELINES: tuple[PolicySpec, ...] = (
    PolicySpec("uniform", "uniform", {}, "baseline"),
    PolicySpec("prior", "prior", {}, "baseline"),
    PolicySpec("fixed-0.5", "fixed-target-share", {"target_share": 0.5}, "baseline"),
    PolicySpec("loss-softmax", "loss-softmax", {"temperature": 0.1, "relative": True}, "baseline"),
    PolicySpec("loss-softmax-plain", "loss-softmax", {"temperature": 1.0, "relative": False}, "baseline"),
)
"""The baselines every evaluation compares against (agent/baselines.py; loss-softmax in both forms:
relative to the start losses with τ = 0.1, the service's default, and METHODS.md's plain
``softmax(ℓ/τ)`` with τ = 1)."""
HAND: tuple[PolicySpec, ...] = (
    PolicySpec("ramp-0.8-0.2", "ramp_down", {"level": "field", "start": 0.8, "end": 0.2, "power": 1.0}, "hand"),
    PolicySpec("ramp-0.5-0.1", "ramp_down", {"level": "field", "start": 0.5, "end": 0.1, "power": 1.0}, "hand"),
    PolicySpec("switch-0.8-0.2", "switch_target_first",
               {"level": "field", "first": 0.8, "then": 0.2, "at_fraction": 0.5}, "hand"),
)
"""Hand schedules of the target share: linear ramps 0.8→0.2 and 0.5→0.1, a switch 0.8→0.2 at the midpoint."""
GRID: tuple[PolicySpec, ...] = tuple(
    PolicySpec(f"grid-{s:.1f}", "constant", {"level": "field", "share": s}, "grid") for s in CONSTANT_GRID
)
"""The fixed-share grid 0.0, 0.1, …, 1.0 (the honest "tuned by hand" baseline: one run per point)."""
GROUPS = {"baselines": BASELINES, "hand": HAND, "grid": GRID, "default": BASELINES + HAND + GRID}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_policies(tokens: Sequence[str]) -> list[PolicySpec]:
    """``default`` | ``baselines`` | ``hand`` | ``grid`` | ``NAME[:key=value,...]`` (a
    ``mixagent.policies`` name) | ``[LABEL=]FOLDER`` (a policy artifact folder holding card.json)."""
    out: list[PolicySpec] = []
    for token in tokens:
        if token in GROUPS:
            out += GROUPS[token]
            continue
        label, _, path = token.rpartition("=") if "=" in token and ":" not in token.split("=")[0] else ("", "", token)
        if Path(path).is_dir():
            folder = Path(path)
            if not (folder / "card.json").is_file():
                raise ContractError(f"--policies: {folder} holds no card.json (not a policy artifact)")
            card = read_json_object(folder / "card.json")
            name = label or f"{card.get('name', folder.name)}-{card.get('version', 'v')}"
            rng = card.get("objective_range") or {}
            fixed = None
            point = rng.get("spread_penalty_min") == rng.get("spread_penalty_max") and rng.get("max_weight_ratio") == 1
            if rng and point:
                fixed = Objective(spread_penalty=rng["spread_penalty_min"])
            out.append(PolicySpec(safe_label(name), "artifact", {}, "learned", artifact=str(folder.resolve()),
                                  fixed_objective=fixed))
            continue
        name, _, rest = token.partition(":")
        params = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ContractError(f"--policies: {token!r}: parameters are key=value pairs, got {item!r}")
            params[key] = _value(value)
        get_family(name)
        suffix = "-".join(f"{k}{v}" for k, v in sorted(params.items()))
        out.append(PolicySpec(safe_label(f"{name}-{suffix}" if suffix else name), name, params, "baseline"))
    labels = [p.label for p in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ContractError(f"--policies: labels {dup} appear twice; give one of them a LABEL=")
    return out


def safe_label(text: str) -> str:
    clean = "".join(c if c.isalnum() or c in "_.-" else "-" for c in text)
    return clean[:40]


def parse_objective(text: str) -> Objective:
    """``default`` or ``spread_penalty=0.5[,FIELD=WEIGHT,...]`` (the other keys are field weights)."""
    if text in ("", "default"):
        return Objective()
    lam = 0.5
    weights: dict[str, float] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise ContractError(f"--objectives: {text!r}: expected key=value pairs, got {item!r}")
        try:
            number = float(value)
        except ValueError:
            raise ContractError(f"--objectives: {text!r}: {key} must be a number, got {value!r}") from None
        if key in ("spread_penalty", "lambda", "lam"):
            lam = number
        else:
            weights[key] = number
    try:
        return Objective(spread_penalty=lam, field_weights=weights or None)
    except ValueError as e:
        raise ContractError(f"--objectives: {text!r}: {e}") from None


def objective_key(o: Objective) -> str:
    """A short, file-name-safe name: ``lam0.5`` or ``lam0.5-source0.4-target0.6``."""
    parts = [f"lam{o.spread_penalty:g}"]
    parts += [f"{f}{w:g}" for f, w in sorted((o.field_weights or {}).items())]
    return "-".join(parts)


@dataclass(frozen=True)
class EvaluationConfig:
    """One evaluation: what runs where, and how."""

    out: Path
    policies: tuple[PolicySpec, ...]
    settings: tuple[Setting, ...]
    objectives: tuple[Objective, ...] = (Objective(),)
    seeds: int = 5
    """Comparison seeds (paired across every policy)."""
    first_seed: int = COMPARE_SEED
    """Comparison seed i is ``first_seed + i``. A study that selects among policies (``bench/
    agent_training.py``) passes its own block, so that no benchmark's comparison seed chooses."""
    selection_seeds: int = 3
    """Seeds on which the best grid point is chosen (grid policies only)."""
    reference: str = "uniform"
    """Label of the policy every paired difference is taken against."""
    grid_compare: Literal["all", "selected"] = "all"
    """``all``: every grid point also runs on the comparison seeds (the table shows the whole grid
    and its hindsight best). ``selected``: the grid runs on the selection seeds first, and only the
    point selected for each objective runs on the comparison seeds: the same honest comparison for
    about a third of the grid's cost (the table then shows the grid's selection-seed means only)."""
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    report_dir: Path | None = None
    """Where ``results.json``, ``report.md`` and ``plots/`` go (default: ``out``). The runs always
    live under ``out/runs/``, so several reports (another agent, other objectives) share one set of
    runs without overwriting each other's tables and plots."""

    @property
    def reports(self) -> Path:
        """The folder the tables and plots go to."""
        return self.report_dir or self.out

    def check(self) -> None:
        if self.seeds < 2:
            raise ContractError(f"--seeds: need at least 2 paired seeds for an interval, got {self.seeds}")
        if self.selection_seeds < 0:
            raise ContractError(f"--selection-seeds: must be >= 0, got {self.selection_seeds}")
        if self.first_seed < 0 or (self.selection_seeds and self.first_seed < SELECT_SEED + self.selection_seeds
                                   and SELECT_SEED < self.first_seed + self.seeds):
            raise ContractError(f"first_seed: comparison seeds {self.first_seed}..{self.first_seed + self.seeds - 1} "
                                f"must be >= 0 and apart from the selection seeds {SELECT_SEED}..")
        if self.grid_compare not in ("all", "selected"):
            raise ContractError(f"--grid-compare: must be 'all' or 'selected', got {self.grid_compare!r}")
        if self.grid_compare == "selected" and not self.selection_seeds:
            raise ContractError("--grid-compare: 'selected' needs --selection-seeds >= 1 to select on")
        if self.reference not in {p.label for p in self.policies}:
            raise ContractError(f"--reference: {self.reference!r} is not one of the policies "
                                f"{[p.label for p in self.policies]}")
        if not self.objectives:
            raise ContractError("--objectives: at least one objective is needed")
        from mixagent.agent.policy import load_artifact  # noqa: PLC0415 - onnxruntime only when evaluating

        for spec in self.policies:  # refuse up front, as the service would (422), not after hours of runs
            if spec.per_objective and spec.artifact is not None:
                _, factory = load_artifact(spec.artifact)
                for setting in self.settings:
                    for o in self.objectives:
                        try:
                            factory(setting.cpt.horizon, o)
                        except ContractError as e:
                            raise ContractError(f"--objectives: {objective_key(o)} for {spec.label}: {e}") from None


# ----- planning -------------------------------------------------------------------------------------


def _open_loop_signature(spec: PolicySpec, ctx: PolicyContext) -> str | None:
    """A hash of the whole schedule of an open-loop policy (None for feedback-driven ones)."""
    from mixagent.agent.baselines import FixedTargetSharePolicy, PriorPolicy, UniformPolicy  # noqa: PLC0415

    policy = build_policy(spec.policy, spec.params, ctx)
    if isinstance(policy, StaticSchedule):
        matrix = policy.matrix
    elif isinstance(policy, UniformPolicy | PriorPolicy | FixedTargetSharePolicy):
        matrix = np.tile(policy.initial_weights(ctx.space).as_array(), (ctx.horizon, 1))
    else:
        return None
    return stable_hash(np.round(matrix, 9).tolist())


def learned_run_id(spec: PolicySpec, objective: Objective, seed: int, digest: str | None = None) -> str:
    """The run of a learned policy at ``objective`` and ``seed`` (its artifact's digest in the name, so a
    retrained network never reuses another's runs); ``digest`` saves rehashing the artifact per seed."""
    return f"{spec.label}-{(digest or spec.digest())[:8]}-{stable_hash(objective_key(objective))[:6]}-s{seed}"


@dataclass
class SettingPlan:
    """The episodes of one setting and which run serves each (label, objective, seed)."""

    episodes: list[Episode]
    runs: dict[tuple[str, str | None, int], str]
    """``(label, objective key or None for objective-free policies, seed) -> run id``."""


def plan_setting(setting: Setting, cfg: EvaluationConfig,
                 compared_grid: Collection[str] | None = None) -> SettingPlan:
    """Every (policy, objective, seed) run of ``setting``. Grid points run on the selection seeds and,
    when ``compared_grid`` is given, on the comparison seeds only if named in it."""
    ctx = PolicyContext(setting.space, setting.cpt.horizon, setting.action, setting.objective)
    compare = [cfg.first_seed + i for i in range(cfg.seeds)]
    select = [SELECT_SEED + j for j in range(cfg.selection_seeds)]
    episodes: dict[str, Episode] = {}
    runs: dict[tuple[str, str | None, int], str] = {}
    for spec in cfg.policies:
        if spec.group == "grid":
            seeds = select + (compare if compared_grid is None or spec.label in compared_grid else [])
        else:
            seeds = compare
        if spec.learned:
            digest = spec.digest()
            for o in cfg.objectives if spec.fixed_objective is None else (spec.fixed_objective,):
                ok = objective_key(o)
                for seed in seeds:
                    rid = learned_run_id(spec, o, seed, digest)
                    episodes.setdefault(rid, Episode(rid, "artifact", {"artifact_digest": digest, "objective": ok},
                                                     seed, index=len(episodes), label=spec.label, objective=o,
                                                     artifact=spec.artifact))
                    runs[(spec.label, ok if spec.per_objective else None, seed)] = rid
            continue
        signature = _open_loop_signature(spec, ctx)
        key = f"static-{signature[:12]}" if signature else f"{spec.label}-{spec.digest()[:8]}"
        for seed in seeds:
            rid = f"{key}-s{seed}"
            episodes.setdefault(rid, Episode(rid, spec.policy, {"level": "field", **spec.params}, seed,
                                             index=len(episodes), label=spec.label))
            runs[(spec.label, None, seed)] = rid
    return SettingPlan(list(episodes.values()), runs)


def selected_grid_points(cfg: EvaluationConfig, plan: SettingPlan, store: FileStore) -> set[str]:
    """The grid point with the best mean on the selection seeds, for each objective (the ones the
    comparison seeds then run)."""
    select = [SELECT_SEED + j for j in range(cfg.selection_seeds)]
    grid = [p for p in cfg.policies if p.group == "grid"]
    held = set(store.list()) if store.records.is_dir() else set()
    runs: dict[str, list[Trajectory]] = {}
    for p in grid:  # each record read once, scored under every objective
        rids = [plan.runs[(p.label, None, s)] for s in select]
        missing = [r for r in rids if r not in held]
        if missing:
            raise RunnerError(f"{store.root}: selection run {missing[0]} is missing; run the evaluation to make it")
        runs[p.label] = [store.read(r).trajectory for r in rids]
    return {best_grid_point(runs, o)[0] for o in cfg.objectives} if runs else set()


def best_grid_point(runs: dict[str, list[Trajectory]], objective: Objective) -> tuple[str, dict[str, float]]:
    """The grid point whose selection-seed runs have the highest mean final B under ``objective``,
    and every point's mean (the one selection rule of the harness)."""
    means = {label: float(np.mean([score(t, objective).final for t in ts])) for label, ts in runs.items()}
    return max(means, key=lambda k: means[k]), means


def _check_folder(setting: Setting) -> Any:
    def check(store: FileStore, stored: list[StoredTrajectory]) -> None:
        path = store.root / "evaluation.json"
        pinned = {"setting_name": setting.name, "setting_hash": setting.hash()}
        if path.exists():
            old = read_json_object(path)
            if old.get("setting_hash") != pinned["setting_hash"]:
                raise RunnerError(f"{path}: this folder holds runs of setting {old.get('setting_name')} "
                                  f"({old.get('setting_hash')}), not {setting.name} ({setting.hash()})")
        write_json_atomic(path, pinned)
        if not (store.root / "setting.json").exists():
            write_json_atomic(store.root / "setting.json", setting.model_dump(mode="json"))

    return check


# ----- statistics -----------------------------------------------------------------------------------


def _t(df: int) -> float:
    from scipy import stats  # noqa: PLC0415

    return float(stats.t.ppf(0.975, df))


def mean_interval(x: Sequence[float]) -> tuple[float, float, float]:
    """Mean and the 95% t-interval of the mean."""
    a = np.asarray(x, dtype=float)
    m = float(a.mean())
    if len(a) < 2:
        return m, math.nan, math.nan
    half = _t(len(a) - 1) * float(a.std(ddof=1)) / math.sqrt(len(a))
    return m, m - half, m + half


def paired_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired seeds and its 95% t-interval."""
    return mean_interval(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))


def unpaired_halfwidth(a: Sequence[float], b: Sequence[float]) -> float:
    """Half-width of the Welch 95% interval of ``mean(a) - mean(b)`` (what pairing saves us)."""
    from scipy import stats  # noqa: PLC0415

    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(stats.t.ppf(0.975, df)) * se


# ----- scoring ---------------------------------------------------------------------------------------


@dataclass
class Scored:
    final: float
    curve: list[float]
    gains: dict[str, float]


def score(t: Trajectory, objective: Objective) -> Scored:
    b = balanced_scores(t.history, objective)
    g = relative_gains(t.history)[-1]
    return Scored(float(b[-1]), [float(x) for x in b], dict(zip(t.history.space.fields, map(float, g), strict=True)))


def fallback_share(spec: PolicySpec, objective: Objective, runs: Sequence[Trajectory]) -> float:
    """Share of a learned policy's decisions in ``runs`` that its fallback baseline made (the
    observation left the ranges seen in training), recomputed from the recorded histories."""
    from mixagent.agent.policy import decide, load_artifact  # noqa: PLC0415
    from mixagent.trajectories.replay import history_prefix  # noqa: PLC0415

    assert spec.artifact is not None
    _, factory = load_artifact(spec.artifact)
    n = fell = 0
    for t in runs:
        policy = factory(t.header.horizon, objective)
        for i in range(t.history.stages):
            n += 1
            fell += decide(policy, t.header.space, history_prefix(t.history, i)).fallback is not None
    return fell / max(n, 1)


def summarise_setting(setting: Setting, cfg: EvaluationConfig, plan: SettingPlan,
                      trajectories: dict[str, Trajectory]) -> dict[str, Any]:
    """Scores, intervals and goal checks of one setting, per objective (JSON-able)."""
    compare = [cfg.first_seed + i for i in range(cfg.seeds)]
    select = [SELECT_SEED + j for j in range(cfg.selection_seeds)]
    out: dict[str, Any] = {"setting": setting.name, "setting_hash": setting.hash(), "objectives": {}}
    def mean_share(label: str, run_key: str | None) -> list[float] | None:
        series = [target_share(trajectories[plan.runs[(label, run_key, s)]].history)
                  for s in compare if (label, run_key, s) in plan.runs]
        return np.mean(series, axis=0).tolist() if series else None

    def complete(spec: PolicySpec, o: Objective, seeds: list[int]) -> bool:
        return all((spec.label, spec.run_key(o), s) in plan.runs for s in seeds)

    out["target_share"] = {spec.label: sh for spec in cfg.policies
                           if (sh := mean_share(spec.label, spec.run_key(cfg.objectives[0]))) is not None}
    out["learned_share_by_objective"] = {  # closed loop: does the share move with the objective?
        spec.label: {objective_key(o): mean_share(spec.label, spec.run_key(o))
                     for o in cfg.objectives if complete(spec, o, compare)}
        for spec in cfg.policies if spec.per_objective
    }
    out["incomplete"] = sorted({spec.label for spec in cfg.policies for o in cfg.objectives
                                if not complete(spec, o, compare)
                                and (spec.group != "grid" or not complete(spec, o, select))})
    for o in cfg.objectives:
        ok = objective_key(o)

        def scores(spec: PolicySpec, seeds: list[int], o: Objective = o) -> list[Scored]:
            return [score(trajectories[plan.runs[(spec.label, spec.run_key(o), s)]], o) for s in seeds]

        per: dict[str, dict[str, Any]] = {}
        finals: dict[str, list[float]] = {}
        for spec in cfg.policies:
            if not complete(spec, o, compare):
                continue  # a grid point left out of the comparison seeds, or runs not made yet
            sc = scores(spec, compare)
            finals[spec.label] = [x.final for x in sc]
            m, lo, hi = mean_interval(finals[spec.label])
            fallback = (fallback_share(spec, spec.fixed_objective or o,
                                       [trajectories[plan.runs[(spec.label, spec.run_key(o), s)]] for s in compare])
                        if spec.learned else None)
            per[spec.label] = {
                "fallback_share": fallback,
                "group": spec.group, "B": finals[spec.label], "mean": m, "lo": lo, "hi": hi,
                "gains": {f: float(np.mean([x.gains[f] for x in sc])) for f in setting.space.fields},
                "curve": np.mean([x.curve for x in sc], axis=0).tolist(),
            }
        grid = [p for p in cfg.policies if p.group == "grid"]
        selected = None
        sel_means: dict[str, float] = {}
        if grid and select and all(complete(p, o, select) for p in grid):
            selected, sel_means = best_grid_point(
                {p.label: [trajectories[plan.runs[(p.label, None, s)]] for s in select] for p in grid}, o)
        out_of_comparison = [p.label for p in grid if p.label not in per]
        hindsight_grid = (max((p.label for p in grid), key=lambda k: per[k]["mean"])
                          if grid and not out_of_comparison else None)
        hand = [p.label for p in cfg.policies if p.group == "hand" and p.label in per]
        best_hand = max(hand, key=lambda k: per[k]["mean"]) if hand else None
        comparisons: dict[str, Any] = {}
        width_ratio = []
        for spec in cfg.policies:
            if spec.label not in per:
                continue
            rows: dict[str, Any] = {}
            targets = {"reference": cfg.reference, "best_hand": best_hand, "selected_grid": selected}
            if spec.learned:
                targets.update({p.label: p.label for p in cfg.policies
                                if p.group == "baseline" and p.label != cfg.reference})
            for name, other in targets.items():
                if other is None or other == spec.label or other not in per:
                    continue
                d, lo, hi = paired_interval(finals[spec.label], finals[other])
                rows[name] = {"against": other, "diff": d, "lo": lo, "hi": hi}
                if name == "reference" and not math.isnan(lo):
                    unpaired = unpaired_halfwidth(finals[spec.label], finals[other])
                    if unpaired > 0:
                        width_ratio.append((hi - lo) / 2 / unpaired)
            if spec.learned:
                rows["goals"] = _goals(rows, cfg)
            comparisons[spec.label] = rows
        learned = [p.label for p in cfg.policies if p.learned and p.label in per]
        learned_pairs = {  # e.g. the objective-conditioned agent against the one trained for one objective
            f"{a} - {b}": dict(zip(("diff", "lo", "hi"), paired_interval(finals[a], finals[b]), strict=True))
            for i, a in enumerate(learned) for b in learned[i + 1:]}
        out["objectives"][ok] = {
            "objective": o.model_dump(), "policies": per, "comparisons": comparisons, "selected_grid": selected,
            "learned_pairs": learned_pairs,
            "hindsight_grid": hindsight_grid, "best_hand": best_hand,
            "grid_selection_means": sel_means if grid and select else {},
            "paired_over_unpaired_halfwidth_median": float(np.median(width_ratio)) if width_ratio else None,
        }
    return out


def _goals(rows: dict[str, Any], cfg: EvaluationConfig) -> dict[str, bool]:
    goals = {}
    for name, r in rows.items():
        if name in ("goals", "selected_grid"):
            continue
        goals[f"beats {r['against']}"] = bool(r["lo"] > 0)
    if "selected_grid" in rows:
        r = rows["selected_grid"]
        goals[f"within {GRID_TOLERANCE} of {r['against']}"] = bool(r["lo"] > -GRID_TOLERANCE)
    return goals


# ----- the report -------------------------------------------------------------------------------------


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.4f}"


def write_report(results: list[dict[str, Any]], cfg: EvaluationConfig, path: Path) -> str:
    lines = ["# Mixing quality", "",
             f"Paired comparison seeds: {cfg.seeds} (seeds {cfg.first_seed}..{cfg.first_seed + cfg.seeds - 1}); grid "
             f"point selected on {cfg.selection_seeds} other seeds ({SELECT_SEED}..). Intervals are 95% t-intervals "
             f"over seeds; differences are paired by seed. B = final balanced score.", ""]
    for res in results:
        if res.get("incomplete"):
            lines += [f"**{res['setting']}: interim report.** Not all runs are made yet; left out (or scored on "
                      f"selection seeds only): {', '.join(res['incomplete'])}.", ""]
        for ok, r in res["objectives"].items():
            if not r["policies"]:
                continue
            fields = list(next(iter(r["policies"].values()))["gains"])
            learned = {k: v["fallback_share"] for k, v in r["policies"].items() if v.get("fallback_share") is not None}
            lines += [f"## {res['setting']} · {ok}", "",
                      f"Selected grid point (selection seeds): {r['selected_grid']}; hindsight best grid point: "
                      f"{r['hindsight_grid']}; best hand schedule (hindsight): {r['best_hand']}. Paired/unpaired "
                      f"interval half-width (median over policies vs {cfg.reference}): "
                      f"{_ratio(r['paired_over_unpaired_halfwidth_median'])}."
                      + "".join(f" {k}: {v:.0%} of decisions by its fallback." for k, v in learned.items()),
                      "",
                      *([("Grid on the selection seeds (mean B): " + ", ".join(
                          f"{k} {v:+.4f}" for k, v in r["grid_selection_means"].items()) + "."), ""]
                        if r.get("grid_selection_means") else []),
                      "| policy | " + " | ".join(f"gain {f}" for f in fields)
                      + f" | B mean [95% CI] | Δ vs {cfg.reference} [95% CI] |",
                      "|---|" + "---|" * len(fields) + "---|---|"]
            for label, p in r["policies"].items():
                c = r["comparisons"].get(label, {}).get("reference")
                delta = f"{_fmt(c['diff'])} [{_fmt(c['lo'])}, {_fmt(c['hi'])}]" if c else "—"
                lines.append(f"| {label} | " + " | ".join(f"{p['gains'][f]:+.4f}" for f in fields)
                             + f" | {p['mean']:+.4f} [{_fmt(p['lo'])}, {_fmt(p['hi'])}] | {delta} |")
            if pairs := r.get("learned_pairs"):
                lines += ["", "Learned policies against each other (paired): " + "; ".join(
                    f"{k} = {_fmt(v['diff'])} [{_fmt(v['lo'])}, {_fmt(v['hi'])}]" for k, v in pairs.items()) + "."]
            for label, rows in r["comparisons"].items():
                if "goals" not in rows:
                    continue
                lines += ["", f"**{label}**: paired differences", "", "| against | Δ mean | 95% CI | goal met |",
                          "|---|---|---|---|"]
                for name, row in rows.items():
                    if name == "goals":
                        continue
                    goal = "lo > -0.002" if name == "selected_grid" else "lo > 0"
                    met = row["lo"] > (-GRID_TOLERANCE if name == "selected_grid" else 0)
                    lines.append(f"| {row['against']} ({name}) | {_fmt(row['diff'])} | [{_fmt(row['lo'])}, "
                                 f"{_fmt(row['hi'])}] | {'yes' if met else 'no'} ({goal}) |")
            lines.append("")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot_results(results: list[dict[str, Any]], out: Path) -> list[Path]:
    plt = pyplot()

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for res in results:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for label, series in res["target_share"].items():
            grid = label.startswith("grid-")
            ax.plot(series, lw=0.8 if grid else 1.8, alpha=0.35 if grid else 1.0, label=None if grid else label)
        ax.set(xlabel="decision", ylabel="target share", title=f"{res['setting']}: target share per policy "
               "(mean over comparison seeds; grid faint)")
        ax.legend(fontsize=7, ncol=2)
        p = out / f"{res['setting']}-shares.png"
        fig.tight_layout()
        paths.append(save_figure(fig, p))
        for label, by_objective in res.get("learned_share_by_objective", {}).items():
            fig, ax = plt.subplots(figsize=(8, 4.5))
            for ok, series in by_objective.items():
                ax.plot(series, lw=1.8, marker="o", ms=3, label=ok)
            ax.set(xlabel="decision", ylabel="target share", ylim=(0, 1),
                   title=f"{res['setting']}: {label}'s target share per objective (mean over comparison seeds)")
            ax.legend(fontsize=8)
            p = out / f"{res['setting']}-{label}-shares-by-objective.png"
            fig.tight_layout()
            paths.append(save_figure(fig, p))
        for ok, r in res["objectives"].items():
            fig, ax = plt.subplots(figsize=(8, 4.5))
            for label, pol in r["policies"].items():
                if pol["group"] == "grid" and label not in (r["selected_grid"], r["hindsight_grid"]):
                    continue
                ax.plot(pol["curve"], lw=2.2 if pol["group"] == "learned" else 1.2, label=label)
            ax.set(xlabel="feedback", ylabel="balanced score B", title=f"{res['setting']} · {ok}")
            ax.legend(fontsize=7, ncol=2)
            p = out / f"{res['setting']}-{ok}-scores.png"
            fig.tight_layout()
            paths.append(save_figure(fig, p))
    return paths


def evaluate(cfg: EvaluationConfig, *, run: bool = True, allow_missing: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) every setting's episodes, then write ``results.json``, ``report.md`` and the
    plots. ``run=False`` only reports on what the folders hold: missing runs are an error, unless
    ``allow_missing``, which reports the policies whose runs are all there and lists the rest as
    ``incomplete`` (an interrupted benchmark's interim report)."""
    cfg.check()
    cfg.out.mkdir(parents=True, exist_ok=True)
    results = []
    for setting in cfg.settings:
        folder = cfg.out / "runs" / setting.name
        compared_grid = None
        if cfg.grid_compare == "selected":  # phase 1: the grid on the selection seeds only
            first = plan_setting(setting, cfg, compared_grid=())
            if run:
                run_episodes(setting, first.episodes, folder, cfg.runner, check_folder=_check_folder(setting),
                             desc=f"evaluate {setting.name} (selection)")
            try:
                compared_grid = selected_grid_points(cfg, first, FileStore(folder))
            except RunnerError:
                if not allow_missing:
                    raise
                compared_grid = set()  # the grid's selection runs are not all made yet
        plan = plan_setting(setting, cfg, compared_grid)
        if run:
            run_episodes(setting, plan.episodes, folder, cfg.runner, check_folder=_check_folder(setting),
                         desc=f"evaluate {setting.name}")
        store = FileStore(folder)
        held = set(store.list()) if store.records.is_dir() else set()
        missing = [e.run_id for e in plan.episodes if e.run_id not in held]
        if missing and not allow_missing:
            raise RunnerError(f"{folder}: {len(missing)} run(s) of this evaluation are missing (e.g. {missing[0]}); "
                              "run the evaluation to make them")
        if missing:
            plan = SettingPlan([e for e in plan.episodes if e.run_id in held],
                               {k: rid for k, rid in plan.runs.items() if rid in held})
        stored = {e.run_id: store.read(e.run_id) for e in plan.episodes}
        summary = summarise_setting(setting, cfg, plan, {k: st.trajectory for k, st in stored.items()})
        summary["rollout_seconds"] = sum(st.meta.wall_s for st in stored.values())  # the runs this report uses
        results.append(summary)
    report_dir = cfg.reports
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report_dir / "results.json", {"seeds": cfg.seeds, "selection_seeds": cfg.selection_seeds,
                                                    "reference": cfg.reference, "settings": results})
    write_report(results, cfg, report_dir / "report.md")
    plot_results(results, report_dir / "plots")
    return results
