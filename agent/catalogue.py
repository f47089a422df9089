"""What an evaluation compares, on which seeds, and how: the policy catalogue and ``EvaluationConfig``.

The catalogue is what ``--policies`` names: the baselines every evaluation compares against, the
hand schedules practitioners write, the fixed-share grid, ``mixagent.policies`` names with
parameters and policy artifact folders, each as a :class:`PolicySpec`. ``EvaluationConfig`` holds the
rest of one evaluation (settings, objectives, paired comparison seeds, selection seeds apart from
them, the reference). The harness (:mod:`mixagent.agent.evaluate`) runs it and the report
(:mod:`mixagent.agent.report`) reads it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mixagent.agent.card import artifact_digest
from mixagent.agent.registry import TRAINER_SIDE_METHODS, build_policy, get_family
from mixagent.agent.runner import EpisodeSpec, RunnerConfig
from mixagent.env.setting import Setting
from mixagent.trajectories.contract import ContractError, Objective, stable_hash
from mixagent.trajectories.policy import PolicyContext
from mixagent.trajectories.schedules import CONSTANT_GRID
from mixagent.trajectories.storage import read_json_object

__all__ = [
    "COMPARE_SEED",
    "SELECT_SEED",
    "GRID_TOLERANCE",
    "PolicySpec",
    "BASELINE_POLICIES",
    "HAND_SCHEDULES",
    "GRID_POINTS",
    "TRAINER_SIDE",
    "CATALOGUE",
    "EvaluationConfig",
    "SettingPlan",
    "parse_policies",
    "parse_objective",
    "objective_key",
    "safe_label",
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
        return artifact_digest(self.artifact)


BASELINE_POLICIES: tuple[PolicySpec, ...] = (
    PolicySpec("uniform", "uniform", {}, "baseline"),
    PolicySpec("prior", "prior", {}, "baseline"),
    PolicySpec("fixed-0.5", "fixed-target-share", {"target_share": 0.5}, "baseline"),
    PolicySpec("loss-softmax", "loss-softmax", {"temperature": 0.1, "relative": True}, "baseline"),
    PolicySpec("loss-softmax-plain", "loss-softmax", {"temperature": 1.0, "relative": False}, "baseline"),
)
"""The baselines every evaluation compares against (agent/baselines.py; loss-softmax in both forms:
relative to the start losses with τ = 0.1, the service's default, and docs/methods.md's plain
``softmax(ℓ/τ)`` with τ = 1)."""
HAND_SCHEDULES: tuple[PolicySpec, ...] = (
    PolicySpec("ramp-0.8-0.2", "ramp_down", {"level": "field", "start": 0.8, "end": 0.2, "power": 1.0}, "hand"),
    PolicySpec("ramp-0.5-0.1", "ramp_down", {"level": "field", "start": 0.5, "end": 0.1, "power": 1.0}, "hand"),
    PolicySpec("switch-0.8-0.2", "switch_target_first",
               {"level": "field", "first": 0.8, "then": 0.2, "at_fraction": 0.5}, "hand"),
)
"""Hand schedules of the target share: linear ramps 0.8→0.2 and 0.5→0.1, a switch 0.8→0.2 at the midpoint."""
GRID_POINTS: tuple[PolicySpec, ...] = tuple(
    PolicySpec(f"grid-{s:.1f}", "constant", {"level": "field", "share": s}, "grid") for s in CONSTANT_GRID
)
"""The fixed-share grid 0.0, 0.1, …, 1.0 (the honest "tuned by hand" baseline: one run per point)."""
TRAINER_SIDE: tuple[PolicySpec, ...] = (PolicySpec("tandem", "tandem", {}, "baseline"),
                                        PolicySpec("aioli", "aioli", {}, "baseline"))
"""The trainer-side methods with their defaults (``env/trainer_side.py``: they act inside the interval
with the trainer's model; the runner drives them like any policy and records their overhead)."""
CATALOGUE: dict[str, tuple[PolicySpec, ...]] = {
    "baselines": BASELINE_POLICIES, "hand": HAND_SCHEDULES, "grid": GRID_POINTS, "trainer-side": TRAINER_SIDE,
    "default": BASELINE_POLICIES + HAND_SCHEDULES + GRID_POINTS,
}
"""The named groups ``--policies`` accepts (``default`` is the first three)."""


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_policies(tokens: Sequence[str]) -> list[PolicySpec]:
    """``default`` | ``baselines`` | ``hand`` | ``grid`` | ``trainer-side`` | ``NAME[:key=value,...]`` (a
    ``mixagent.policies`` name) | ``[LABEL=]FOLDER`` (a policy artifact folder holding card.json)."""
    out: list[PolicySpec] = []
    for token in tokens:
        if token in CATALOGUE:
            out += CATALOGUE[token]
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
    """The evaluation folder: every run under ``out/runs/<setting>/`` (resumable), reports beside them."""
    policies: tuple[PolicySpec, ...]
    """What is compared (:func:`parse_policies`)."""
    settings: tuple[Setting, ...]
    """Where: every policy runs on every setting."""
    objectives: tuple[Objective, ...] = (Objective(),)
    """Under which objectives runs are scored (learned policies that read it run once per objective)."""
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
    """How the runs are executed (workers, threads, cache)."""
    report_dir: Path | None = None
    """Where ``results.json``, ``report.md`` and ``plots/`` go (default: ``out``). The runs always
    live under ``out/runs/``, so several reports (another agent, other objectives) share one set of
    runs without overwriting each other's tables and plots."""

    command: str | None = None
    """The command line that asked for this evaluation (recorded in ``results.json``; default: this
    process's own)."""

    @property
    def compare_seeds(self) -> list[int]:
        """The paired comparison seeds, ``first_seed + i``."""
        return [self.first_seed + i for i in range(self.seeds)]

    @property
    def select_seeds(self) -> list[int]:
        """The selection seeds, ``SELECT_SEED + j`` (never a comparison seed)."""
        return [SELECT_SEED + j for j in range(self.selection_seeds)]

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
        from mixagent.agent.onnx_policy import load_artifact  # noqa: PLC0415 - onnxruntime only when evaluating

        for spec in self.policies:  # a trainer-side method's probe budget must fit every setting's interval
            if spec.policy in TRAINER_SIDE_METHODS:
                _check_trainer_side(spec, self.settings)
        for spec in self.policies:  # refuse up front, as the service would (422), not after hours of runs
            if spec.per_objective and spec.artifact is not None:
                _, factory = load_artifact(spec.artifact)
                for setting in self.settings:
                    for o in self.objectives:
                        try:
                            factory(setting.space, setting.cpt.horizon, o)
                        except ContractError as e:
                            raise ContractError(f"--objectives: {objective_key(o)} for {spec.label}: {e}") from None


def _check_trainer_side(spec: PolicySpec, settings: Sequence[Setting]) -> None:
    """Refuse a trainer-side method that cannot act in a setting's interval (a probe budget larger
    than it), naming both numbers, before any run."""
    from mixagent.env.trainer_side import TrainerSideMethod  # noqa: PLC0415 - torch, only for such methods

    for setting in settings:
        ctx = PolicyContext(setting.space, setting.cpt.horizon, setting.action, setting.objective)
        method = build_policy(spec.policy, spec.params, ctx)
        if not isinstance(method, TrainerSideMethod):
            raise ContractError(f"--policies: {spec.policy!r} is listed as trainer-side but builds a "
                                f"{type(method).__name__}")
        try:
            method.check_interval(setting.cpt.interval, setting.space)
        except ContractError as e:
            raise ContractError(f"--policies: {spec.label} on {setting.name}: {e}") from None


@dataclass
class SettingPlan:
    """The episodes of one setting and which run serves each (label, objective, seed)."""

    episodes: list[EpisodeSpec]
    runs: dict[tuple[str, str | None, int], str]
    """``(label, objective key or None for objective-free policies, seed) -> run id``."""
