"""RegMix: regress the outcome on the mixture over static proxy runs, ship the best predicted mixture.

    mixagent agent regmix --data data/trajectories/math-tiny-static --out runs/policies/regmix

Liu et al. (2024), as ``../shared/METHODS.md`` describes it, on this project's runs: every record of
the dataset folders whose mixture never changed is one sample ``(w, B_T)``, ``w`` its K domain
weights and ``B_T`` its final balanced score. The raw feedback is stored, so one set of runs is
scored under every objective of a grid (:data:`OBJECTIVE_GRID`, λ from 0 to 0.9): per objective a
LightGBM regressor ``w -> B_T`` is fitted, ``candidates`` mixtures are drawn from
``Dirichlet(prior·s)`` with ``s`` log-uniform (the static family's own law, so the search stays where
the data is), and the mean of the ``top`` best predicted is the objective's mixture. The artifact is
the table of those mixtures (``mixtures.json``, a ``kind: mixture`` card: served with numpy, no
LightGBM) and each objective's model in LightGBM's text format (``model-lam*.txt``, for inspection
and refits; never unpickled). :func:`learning_curve` says how many runs a fit needs (held-out
Spearman rank correlation against the number of training runs).

A fitted mixture means something only on the domain space and field split it was fitted on, so a
benchmark setting needs static runs of its own: that is RegMix's price, reported beside its score.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.agent.card import CARD_FILE, PolicyCard
from mixagent.agent.dataset import DatasetError, TrainingRun, final_score, load_runs
from mixagent.agent.set_policy import mixture_roughness
from mixagent.agent.static_mixture import MIXTURE_FILE, MixtureEntry, MixtureTable
from mixagent.trajectories.contract import ActionSpec, Objective, ObjectiveRange, Weights, stable_hash
from mixagent.trajectories.encoding import ENCODER_VERSION

__all__ = ["MIN_RUNS", "OBJECTIVE_GRID", "StaticSamples", "static_samples", "fit_model", "search_mixture",
           "learning_curve", "fit_regmix"]

MIN_RUNS = 24
"""Fewer static runs than this is refused: a 12-domain regression has nothing to stand on."""
OBJECTIVE_GRID: tuple[Objective, ...] = tuple(Objective(spread_penalty=round(0.1 * i, 1)) for i in range(10))
"""The objectives a RegMix artifact keeps a mixture for (a run gets the nearest)."""
LGB_PARAMS: dict[str, Any] = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 15,
                              "min_data_in_leaf": 5, "feature_fraction": 0.9, "bagging_fraction": 0.9,
                              "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "num_threads": 1}
"""LightGBM's settings (small trees and shrinkage: a few hundred samples, like RegMix's own)."""
ROUNDS = 300


@dataclass
class StaticSamples:
    """The static runs of one domain space: their mixtures ``X [n, K]`` and the runs themselves."""

    domains: list[str]
    priors: np.ndarray
    x: np.ndarray
    runs: list[TrainingRun]

    def outcomes(self, objective: Objective) -> np.ndarray:
        return np.array([final_score(r, objective) for r in self.runs])


def static_samples(runs: Sequence[TrainingRun], min_runs: int = MIN_RUNS) -> StaticSamples:
    """The runs whose mixture never changed (every other run is left out), all over one domain
    space; a :class:`DatasetError` naming the problem otherwise."""
    static = [r for r in runs if mixture_roughness(r) == 0.0 and r.trajectory.history.weights]
    if not static:
        raise DatasetError("--data: no static run (a mixture that never changes) to fit RegMix on")
    spaces = {r.trajectory.header.space.names for r in static}
    if len(spaces) != 1:
        raise DatasetError(f"--data: the static runs cover {len(spaces)} domain spaces; RegMix fits one at a time")
    if len(static) < min_runs:
        raise DatasetError(f"--data: {len(static)} static runs; RegMix needs at least {min_runs} (the learning "
                           "curve, bench/regmix_curve.py, says how many it needs to rank mixtures well)")
    space = static[0].trajectory.header.space
    x = np.stack([r.trajectory.history.weights[0].as_array() for r in static])
    return StaticSamples(list(space.names), space.priors(), x, static)


def fit_model(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Any:
    """A LightGBM regressor of ``y`` on the mixtures ``x``."""
    import lightgbm as lgb  # noqa: PLC0415 - the methods extra

    data = lgb.Dataset(x, label=y, params={"verbose": -1})
    return lgb.train({**LGB_PARAMS, "seed": seed}, data, num_boost_round=ROUNDS)


def _candidates(priors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    s = np.exp(rng.uniform(np.log(0.3), np.log(30.0), size=n))[:, None] * priors[None, :] * len(priors)
    w = rng.gamma(s)
    w = w / w.sum(axis=1, keepdims=True)
    return np.maximum(w, 1e-4) / np.maximum(w, 1e-4).sum(axis=1, keepdims=True)


def search_mixture(model: Any, priors: np.ndarray, candidates: int = 100_000, top: int = 100,
                   seed: int = 0) -> tuple[np.ndarray, float]:
    """The mean of the ``top`` best of ``candidates`` Dirichlet mixtures by the model's prediction,
    and the model's prediction for that mean."""
    cand = _candidates(priors, candidates, np.random.default_rng(seed))
    pred = model.predict(cand, num_threads=1)
    best = cand[np.argsort(pred)[-top:]].mean(axis=0)
    return best / best.sum(), float(model.predict(best[None, :], num_threads=1)[0])


def learning_curve(samples: StaticSamples, sizes: Sequence[int], objective: Objective, repeats: int = 5,
                   test_fraction: float = 0.25, seed: int = 0) -> list[dict[str, float]]:
    """Held-out Spearman ρ between predicted and measured B_T against the number of training runs:
    per repeat a fixed test split, then fits on the first ``n`` of a shuffled rest."""
    from scipy.stats import spearmanr  # noqa: PLC0415

    y = samples.outcomes(objective)
    n_all = len(y)
    n_test = max(8, round(test_fraction * n_all))
    rows = []
    for n in sizes:
        if n > n_all - n_test:
            break
        rhos = []
        for rep in range(repeats):
            order = np.random.default_rng([seed, rep]).permutation(n_all)
            test, rest = order[:n_test], order[n_test:]
            model = fit_model(samples.x[rest[:n]], y[rest[:n]], seed=rep)
            rho = spearmanr(model.predict(samples.x[test], num_threads=1), y[test]).statistic
            rhos.append(float(rho))
        rows.append({"runs": float(n), "spearman_mean": float(np.mean(rhos)), "spearman_min": float(np.min(rhos)),
                     "spearman_max": float(np.max(rhos)), "test_runs": float(n_test)})
    return rows


def fit_regmix(data: Sequence[str | Path], out: str | Path, name: str = "regmix", version: str = "v1",
               candidates: int = 100_000, top: int = 100, seed: int = 0) -> PolicyCard:
    """Fit one model per objective of :data:`OBJECTIVE_GRID` on the static runs of ``data`` and
    write the artifact (``card.json``, ``mixtures.json``, ``model-lam*.txt``, ``fit.json``) to ``out``."""
    t0 = time.perf_counter()
    runs, training_data = load_runs(data)
    samples = static_samples(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for objective in OBJECTIVE_GRID:
        model = fit_model(samples.x, samples.outcomes(objective), seed)
        w, predicted = search_mixture(model, samples.priors, candidates, top, seed)
        entries.append(MixtureEntry(objective=objective, weights=list(Weights.from_raw(w).values),
                                    predicted=predicted))
        model.save_model(str(out / f"model-lam{objective.spread_penalty:g}.txt"))
    table = MixtureTable(method="regmix", domains=samples.domains, entries=entries)
    (out / MIXTURE_FILE).write_text(table.model_dump_json(indent=1) + "\n")
    fit_s = time.perf_counter() - t0
    card = PolicyCard(
        name=name, version=version, kind="mixture", model_file=MIXTURE_FILE, algorithm="regmix/lightgbm",
        description=f"RegMix (LightGBM over {len(samples.runs)} static runs of {training_data[0].setting_name}): "
                    "the best predicted static mixture per objective",
        encoder_version=ENCODER_VERSION, action=ActionSpec(level="domain"), domains=samples.domains,
        objective_range=ObjectiveRange(spread_penalty_min=0.0, spread_penalty_max=0.9, max_weight_ratio=1.0),
        training_data=training_data, training_data_hash=stable_hash([d.content_hash for d in training_data]),
        metrics={"data/static_runs": float(len(samples.runs)), "seconds/fit": fit_s},
    )
    (out / CARD_FILE).write_text(card.model_dump_json(indent=1) + "\n")
    (out / "fit.json").write_text(json.dumps({
        "static_runs": sorted(r.run_id for r in samples.runs), "candidates": candidates, "top": top, "seed": seed,
        "lightgbm": LGB_PARAMS, "rounds": ROUNDS, "fit_seconds": fit_s,
    }, indent=1, sort_keys=True) + "\n")
    return card
