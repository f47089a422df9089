"""The evaluation report: statistics over paired seeds, per-setting summaries, Markdown and plots.

Everything here reads finished runs; nothing runs the env. A run is scored by its final balanced
score ``B`` under an objective (the raw feedback is stored, so one run is scored under every
objective); intervals are 95% t-intervals over seeds and differences are paired by seed. The one
selection rule of the harness (:func:`best_grid_point`) lives here too, beside the scores it ranks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.agent.catalogue import (
    GRID_TOLERANCE,
    SELECT_SEED,
    EvaluationConfig,
    PolicySpec,
    SettingPlan,
    objective_key,
)
from mixagent.agent.registry import TRAINER_SIDE_METHODS
from mixagent.env.setting import Setting
from mixagent.trajectories.contract import Objective, Trajectory
from mixagent.trajectories.encoding import balanced_scores, relative_gains
from mixagent.trajectories.plots import (
    domain_colours,
    domain_figure,
    domain_legend,
    pyplot,
    save_figure,
    stack_domain_weights,
    target_share,
)
from mixagent.trajectories.storage import RecordMeta

__all__ = [
    "mean_interval",
    "paired_interval",
    "unpaired_halfwidth",
    "Scored",
    "score",
    "best_grid_point",
    "fallback_share",
    "summarise_setting",
    "write_report",
    "plot_results",
    "plot_domain_schedules",
    "method_costs",
]

_REPO = Path(__file__).resolve().parents[1]


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
    from mixagent.agent.onnx_policy import decide, load_artifact  # noqa: PLC0415
    from mixagent.trajectories.replay import history_prefix  # noqa: PLC0415

    assert spec.artifact is not None
    _, factory = load_artifact(spec.artifact)
    n = fell = 0
    for t in runs:
        policy = factory(t.header.space, t.header.horizon, objective)
        for i in range(t.history.stages):
            n += 1
            fell += decide(policy, t.header.space, history_prefix(t.history, i)).fallback is not None
    return fell / max(n, 1)


def summarise_setting(setting: Setting, cfg: EvaluationConfig, plan: SettingPlan,
                      trajectories: dict[str, Trajectory],
                      metas: Mapping[str, RecordMeta] | None = None) -> dict[str, Any]:
    """Scores, intervals and goal checks of one setting, per objective (JSON-able); ``metas`` (the
    records' metadata) price the in-run overhead of trainer-side methods (:func:`method_costs`)."""
    compare = cfg.compare_seeds
    select = cfg.select_seeds
    out: dict[str, Any] = {"setting": setting.name, "setting_hash": setting.hash(), "objectives": {}}
    if metas:  # which arithmetic made the runs: pairs across machines also differ by it
        kinds = [m.provenance.get("numerics", "unknown") for k, m in metas.items() if k in trajectories]
        out["numerics"] = {n: kinds.count(n) for n in sorted(set(kinds))}

    def mean_share(label: str, run_key: str | None) -> list[float] | None:
        series = [target_share(trajectories[plan.runs[(label, run_key, s)]].history)
                  for s in compare if (label, run_key, s) in plan.runs]
        return np.mean(series, axis=0).tolist() if series else None

    def mean_weights(label: str, run_key: str | None) -> list[list[float]] | None:
        series = [trajectories[plan.runs[(label, run_key, s)]].history.weight_matrix()
                  for s in compare if (label, run_key, s) in plan.runs]
        return np.mean(series, axis=0).tolist() if series else None

    def complete(spec: PolicySpec, o: Objective, seeds: list[int]) -> bool:
        return all((spec.label, spec.run_key(o), s) in plan.runs for s in seeds)

    out["target_share"] = {spec.label: sh for spec in cfg.policies
                           if (sh := mean_share(spec.label, spec.run_key(cfg.objectives[0]))) is not None}
    out["domains"] = [{"name": d.name, "field": d.field} for d in setting.space.domains]
    out["domain_weights"] = {  # the K-dimensional schedule: per policy (and objective, if it reads one)
        spec.label: {objective_key(o): w for o in (cfg.objectives if spec.per_objective else cfg.objectives[:1])
                     if (w := mean_weights(spec.label, spec.run_key(o))) is not None}
        for spec in cfg.policies}
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
    out["costs"] = method_costs(setting, cfg, plan, trajectories, metas)
    return out


# ----- the price of each method ---------------------------------------------------------------------


def _dataset_cpu_hours(folder: str, runs: float) -> float | None:
    """CPU-hours of ``runs`` records of a dataset folder: its ``card.json``'s mean wall time per
    trajectory times the torch threads its ``generate.json`` pins (None: not on this machine)."""
    for root in (Path.cwd(), _REPO, _REPO / "data" / "trajectories"):
        try:
            card = json.loads((root / folder / "card.json").read_text())
            per = float(card["wall_time_s"]["per_trajectory_mean"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        try:
            threads = int(json.loads((root / folder / "generate.json").read_text()).get("threads") or 1)
        except (OSError, ValueError, TypeError, AttributeError):
            threads = 1
        return per * runs * threads / 3600
    return None


def _artifact_cost(artifact: str, setting: Setting) -> dict[str, Any]:
    from mixagent.agent.card import CARD_FILE, PolicyCard  # noqa: PLC0415

    try:
        card = PolicyCard.model_validate_json((Path(artifact) / CARD_FILE).read_text())
    except (OSError, ValueError):
        return {"proxy_runs": None, "cpu_hours": None, "fit_seconds": None, "from_evaluated_setting": None}
    data = card.training_data
    total = sum(d.trajectories for d in data)
    used = card.metrics.get("data/static_runs", total)  # a static searcher fits a folder's static runs only
    hours = [_dataset_cpu_hours(d.folder, d.trajectories * used / max(total, 1)) for d in data]
    same = [d.setting_hash == setting.hash() for d in data]
    return {"proxy_runs": int(used), "cpu_hours": None if None in hours else float(sum(h or 0.0 for h in hours)),
            "fit_seconds": float(sum(v for k, v in card.metrics.items() if k.startswith("seconds/"))),
            "from_evaluated_setting": None if not data else "yes" if all(same) else "partly" if any(same) else "no"}


def method_costs(setting: Setting, cfg: EvaluationConfig, plan: SettingPlan,
                 trajectories: dict[str, Trajectory],
                 metas: Mapping[str, RecordMeta] | None = None) -> dict[str, dict[str, Any]]:
    """The cost column: per policy, the proxy runs it needed before its evaluation (an artifact's
    training runs; the grid's sweep on the selection seeds), their CPU-hours, its fit or training
    seconds (the card's ``seconds/*``), and whether those runs came from the evaluated setting
    (``yes``, ``partly``, ``no``; None: it needed none). A baseline or hand schedule needs none.

    And what it costs during a run: ``in_run_cpu_s_per_decision``, the median over its runs of a
    trainer-side method's own CPU-seconds per decision beside the model's steps (its twin, its
    probes; from the records' ``meta.method``, so only with ``metas``; None for a policy, whose
    decision is a service call), and ``needs_trainer_model`` (it cannot be served over HTTP)."""
    threads = setting.cpt.threads or 1
    sweep = [trajectories[rid] for p in cfg.policies if p.group == "grid" for s in cfg.select_seeds
             if (rid := plan.runs.get((p.label, None, s))) is not None and rid in trajectories]
    costs: dict[str, dict[str, Any]] = {}
    for spec in cfg.policies:
        if spec.group == "grid":
            costs[spec.label] = {"proxy_runs": len(sweep),
                                 "cpu_hours": sum(sum(t.stage_wall_s) for t in sweep) * threads / 3600,
                                 "fit_seconds": 0.0, "from_evaluated_setting": "yes" if sweep else None}
        elif spec.artifact is None:
            costs[spec.label] = {"proxy_runs": 0, "cpu_hours": 0.0, "fit_seconds": 0.0, "from_evaluated_setting": None}
        else:
            costs[spec.label] = _artifact_cost(spec.artifact, setting)
        overhead = [float(m.method["overhead_cpu_s_per_decision"]) for (label, _, _), rid in plan.runs.items()
                    if label == spec.label and metas is not None and (m := metas.get(rid)) is not None
                    and m.method.get("overhead_cpu_s_per_decision") is not None]
        costs[spec.label] |= {"in_run_cpu_s_per_decision": float(np.median(overhead)) if overhead else None,
                              "needs_trainer_model": spec.policy in TRAINER_SIDE_METHODS}
    return costs


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


def best_grid_point(runs: dict[str, list[Trajectory]], objective: Objective) -> tuple[str, dict[str, float]]:
    """The grid point whose selection-seed runs have the highest mean final B under ``objective``,
    and every point's mean (the one selection rule of the harness)."""
    means = {label: float(np.mean([score(t, objective).final for t in ts])) for label, ts in runs.items()}
    return max(means, key=lambda k: means[k]), means

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
        if res.get("costs"):
            lines += [f"## {res['setting']} · price", "",
                      "What each method needed before its evaluation runs: proxy runs (an artifact's training or "
                      "fitting runs, the grid's sweep on the selection seeds), their CPU-hours, fit/training "
                      "seconds, and whether those runs came from this setting; then what it costs inside a run "
                      "(a trainer-side method's own CPU-seconds per decision beside the model's steps) and "
                      "whether it needs the trainer's model (the HTTP service cannot serve it).", "",
                      "| policy | extra proxy runs | CPU-hours | fit/train s | runs from this setting "
                      "| in-run CPU-s per decision | needs the trainer's model |",
                      "|---|---|---|---|---|---|---|"]
            for label, c in res["costs"].items():
                cells = ["n/a" if c[k] is None else f"{c[k]:{f}}" for k, f in
                         (("proxy_runs", "d"), ("cpu_hours", ".2f"), ("fit_seconds", ".0f"))]
                overhead = c.get("in_run_cpu_s_per_decision")
                lines.append(f"| {label} | " + " | ".join(cells) + f" | {c['from_evaluated_setting'] or '—'} | "
                             + ("—" if overhead is None else f"{overhead:.2f}")
                             + f" | {'yes' if c.get('needs_trainer_model') else 'no'} |")
            lines.append("")
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


def plot_domain_schedules(res: dict[str, Any], out: Path, objective: str | None = None) -> Path | None:
    """One stacked area of domain weights over decisions per policy (the mean over comparison seeds):
    source domains in blues, target domains in oranges; a policy that reads the objective is drawn
    under ``objective``, or (default) once per evaluated objective, since that is where such policies
    differ. Grid points other than the selected ones are left out."""
    domains = res.get("domains") or []
    chosen = {r.get("selected_grid") for r in res["objectives"].values()} | {
        r.get("best_hand") for r in res["objectives"].values()}
    panels = []
    for label, by_objective in res.get("domain_weights", {}).items():
        if (label.startswith("grid-") and label not in chosen) or not by_objective:
            continue
        keys = [objective] if objective in by_objective else list(by_objective)
        panels += [(label, key, np.asarray(by_objective[key])) for key in keys]
    if not domains or not panels:
        return None
    colours = domain_colours([d["field"] for d in domains])
    fig, axes, bottom = domain_figure(len(panels), len(domains))
    for ax, (label, key, w) in zip(axes.flat, panels, strict=False):
        stack_domain_weights(ax, w, colours)
        ax.set_title(f"{label} ({key})" if len(res["domain_weights"][label]) > 1 else label, fontsize=8)
    domain_legend(fig, [d["name"] for d in domains], colours, axes.shape[1])
    fig.suptitle(f"{res['setting']}: domain weights per policy (mean over comparison seeds)", fontsize=10)
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
    return save_figure(fig, out / f"{res['setting']}-domain-weights.png")


def plot_results(results: list[dict[str, Any]], out: Path) -> list[Path]:
    plt = pyplot()

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for res in results:
        stacked = plot_domain_schedules(res, out)
        if stacked is not None:
            paths.append(stacked)
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
