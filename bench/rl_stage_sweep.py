"""The RL stage after BC, swept and ranked OFFLINE (validation trajectories only; no rollout here).

    python bench/rl_stage_sweep.py                  # the small sweep committed in bench/results (~15 CPU-min)
    python bench/rl_stage_sweep.py --scale full     # rl_steps 6000, FQE 3000 (~1 CPU-hour)
    python bench/rl_stage_sweep.py --report-only    # tables and plot from the candidates already trained
    python bench/rl_stage_sweep.py --report-only --select-rollouts 10 --workers 2   # the lead's: real rollouts
        # of the shortlist against its BC start (math-tiny and code-tiny, λ = 0.5, seeds 3000..3009)

Two BC starts are trained once on the field-level folders (math-tiny, code-tiny; action-v2, MLP): a
stochastic one (the actor type of CQL and Cal-QL) and a deterministic one (ReBRAC's). Every RL
candidate warm-starts from the matching start's artifact (``warm_start``), with the drift bound of
the scale's drift bound (0.2) and a critic warm-up, and sweeps its own knob: ReBRAC's actor penalty
β1, CQL's and Cal-QL's conservative weight; ReBRAC at β1 = 0.4 (TD3+BC's weight) also sweeps the
drift bound itself, and runs once without one to show what the bound prevents. Each candidate
folder is skipped when it already holds a card, so an interrupted sweep resumes.

Offline ranking (``agent/offline_ranking.py``): by the nearest-behaviour return on the validation
trajectories (all relabelled under shared objectives per setting); FQE, the critic's own value, the
drift from BC and the distance to the best validation trajectory are reported beside it. The
shortlist is the best two RL candidates that moved from their start; the real selection rollouts
(training-setting seeds 3000.., paired against the BC start, never a benchmark seed) are the
lead's to run, and the JSON keeps a column for their result beside the offline rank.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = [ROOT / "data" / "trajectories" / "math-tiny", ROOT / "data" / "trajectories" / "code-tiny"]
OUT = ROOT / "runs" / "rl-stage"
RESULTS = ROOT / "bench" / "results"
STARTS: dict[str, dict[str, Any]] = {"bc-sto": {"bc_policy": "stochastic"}, "bc-det": {"bc_policy": "deterministic"}}
SWEEPS: dict[str, tuple[str, str, str, tuple[float, ...], dict[str, Any]]] = {
    # name -> (algo, its BC start, the swept TrainConfig field, values, fixed fields)
    "rebrac": ("bc+rebrac", "bc-det", "rebrac_actor_beta", (0.01, 0.1, 0.4, 1.0), {}),
    "rebrac-bound": ("bc+rebrac", "bc-det", "drift_bound", (0.05, 0.1, 0.4), {"rebrac_actor_beta": 0.4}),
    "cql": ("bc+cql", "bc-sto", "conservative_weight", (1.0, 5.0, 10.0), {}),
    "calql": ("bc+calql", "bc-sto", "conservative_weight", (1.0, 5.0), {}),
}
UNBOUNDED = ("rebrac-bound", 0.4)
"""One ReBRAC point trained again with no drift bound: how far the actor goes without it."""
SCALES: dict[str, dict[str, Any]] = {
    "small": {"rl_steps": 1000, "steps_per_epoch": 50, "fqe_steps": 1000, "critic_warmup_steps": 1000,
              "drift_bound": 0.2},
    "full": {"rl_steps": 6000, "steps_per_epoch": 100, "fqe_steps": 3000, "critic_warmup_steps": 2000,
             "drift_bound": 0.2},
}
NEAREST_K = 3
OBJECTIVES = 8
SELECT_ROLLOUT_SEED = 3000


def candidates(scale: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every training run of the sweep: name -> (algo, TrainConfig overrides), starts first."""
    out: dict[str, tuple[str, dict[str, Any]]] = {name: ("bc", over) for name, over in STARTS.items()}
    for sweep, (algo, start, knob, values, fixed) in SWEEPS.items():
        for v in values:
            base = {**SCALES[scale], **fixed, knob: v, "start": start, "sweep": sweep}
            out[f"{sweep}-{v:g}"] = (algo, base)
            if (sweep, v) == UNBOUNDED:
                out[f"{sweep}-{v:g}-unbounded"] = (algo, {**base, "drift_bound": None})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--data", nargs="+", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--scale", choices=sorted(SCALES), default="small")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--select-rollouts", type=int, default=0,
                    help="real rollouts per shortlisted candidate and its BC start, paired (seeds 3000..)")
    ap.add_argument("--rollout-settings", nargs="+", default=["math-tiny", "code-tiny"])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import torch

    from mixagent.agent.train import TrainConfig, train
    from mixagent.console import configure_logging

    configure_logging(False)
    torch.set_num_threads(1)
    out = args.out / args.scale
    plan = candidates(args.scale)
    for i, (name, (algo, over)) in enumerate(plan.items()):
        folder = out / name
        if args.report_only or (folder / "card.json").is_file():
            continue
        fields = {k: v for k, v in over.items() if k in TrainConfig.model_fields}
        if "start" in over:
            fields["warm_start"] = str(out / over["start"])
        cfg = TrainConfig.model_validate({"name": "agent", "version": name, **fields})  # None: unbounded
        print(f"[{i + 1}/{len(plan)}] {name}: {algo} {fields}", file=sys.stderr, flush=True)
        cpu = time.process_time()
        train(args.data, algo, folder, cfg, progress=sys.stderr.isatty())
        (folder / "cpu_seconds.json").write_text(json.dumps({"cpu_s": time.process_time() - cpu}) + "\n")
    rows = rank(plan, out, args)
    if args.select_rollouts:
        add_select_rollouts(rows, out, args)
    report(rows, args)
    return 0


def add_select_rollouts(rows: list[dict[str, Any]], out: Path, args: argparse.Namespace) -> None:
    """The shortlist and its BC start in the real env on the training settings at λ = 0.5, paired on
    seeds ``SELECT_ROLLOUT_SEED``.. (no benchmark compares on them), differences against the start;
    rollout rank by B averaged over the settings."""
    from mixagent.agent.catalogue import EvaluationConfig, parse_objective, parse_policies, safe_label
    from mixagent.agent.evaluate import evaluate
    from mixagent.agent.runner import RunnerConfig
    from mixagent.env.setting import load_setting

    shortlisted = [r for r in rows if r["shortlisted"]]
    for start in sorted({r["start"] for r in shortlisted}):
        names = [start] + [r["name"] for r in shortlisted if r["start"] == start]
        cfg = EvaluationConfig(out=out / "select-rollouts" / start,
                               policies=tuple(parse_policies([f"{n}={out / n}" for n in names])),
                               settings=tuple(load_setting(s) for s in args.rollout_settings),
                               objectives=(parse_objective("spread_penalty=0.5"),), seeds=args.select_rollouts,
                               first_seed=SELECT_ROLLOUT_SEED, selection_seeds=0, reference=safe_label(start),
                               runner=RunnerConfig(workers=args.workers, threads=1, progress=sys.stderr.isatty()))
        results = evaluate(cfg)
        for r in (x for x in rows if x["name"] in names):
            per = {res["setting"]: res["objectives"]["lam0.5"] for res in results}
            r["rollout_B"] = {s: per[s]["policies"][safe_label(r["name"])]["mean"] for s in per}
            if r["name"] != start:
                r["rollout_vs_bc_start"] = {s: [per[s]["comparisons"][safe_label(r["name"])]["reference"][k]
                                                for k in ("diff", "lo", "hi")] for s in per}
    ran = sorted((r for r in rows if r["rollout_B"]), key=lambda r: -sum(r["rollout_B"].values()))
    for i, r in enumerate(ran):
        r["rollout_rank"] = i + 1


def rank(plan: dict[str, tuple[str, dict[str, Any]]], out: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each trained candidate's offline readings, ranked by the nearest-behaviour return."""
    import d3rlpy

    from mixagent.agent.offline_ranking import offline_scores, validation_set
    from mixagent.agent.train import TrainConfig

    cfg = TrainConfig()
    val = validation_set(args.data, cfg.validation_fraction, cfg.seed, OBJECTIVES, cfg.objective_range,
                         cfg.action_map)
    learners = {n: d3rlpy.load_learnable(str(out / n / "learner.d3")) for n in plan
                if (out / n / "learner.d3").is_file()}
    rows = []
    for name, (algo, over) in plan.items():
        if name not in learners:
            continue
        card = json.loads((out / name / "card.json").read_text())
        m = card["metrics"]
        start = over.get("start")
        cpu = json.loads((out / name / "cpu_seconds.json").read_text())["cpu_s"]
        scores = offline_scores(learners[name], learners.get(start) if start else None, val, NEAREST_K,
                                cfg.reward_scale, critic=algo != "bc")
        knob = SWEEPS[over["sweep"]][2] if "sweep" in over else None
        rows.append({"name": name, "algo": algo, "start": start, "sweep": over.get("sweep"),
                     "param": knob, "value": over.get(knob) if knob else None,
                     "drift_bound": card["warm_start"]["drift_bound"] if card.get("warm_start") else None,
                     "rl_steps_asked": over.get("rl_steps"),
                     "rl_steps_kept": card["warm_start"]["rl_steps"] if card.get("warm_start") else None,
                     "fqe_return": m.get("val/fqe_return"), "cpu_s": cpu, **scores,
                     "fqe_steps": json.loads((out / name / "training.json").read_text())["config"]["fqe_steps"],
                     "offline_rank": None, "shortlisted": False,
                     "rollout_B": None, "rollout_vs_bc_start": None, "rollout_rank": None})
    ranked = sorted(rows, key=lambda r: (-r["nearest_behaviour_return"], -(r["fqe_return"] or 0.0)))
    for i, r in enumerate(ranked):
        r["offline_rank"] = i + 1
    by_name = {r["name"]: r for r in rows}
    moved = [r for r in ranked if r["algo"] != "bc" and (r["rl_steps_kept"] or 0) > 0
             and r["drift_bound"] is not None]
    for r in moved[:2]:
        r["shortlisted"] = True
        r["beats_bc_start_offline"] = r["nearest_behaviour_return"] > by_name[r["start"]]["nearest_behaviour_return"]
    return ranked


def _f(x: Any, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _rollout(r: dict[str, Any]) -> str:
    if not r["rollout_B"]:
        return "—"
    vs = r["rollout_vs_bc_start"] or {}
    return "; ".join(f"{s} {b:+.4f}" + (f" (Δ vs start {vs[s][0]:+.4f} [{vs[s][1]:+.4f}, {vs[s][2]:+.4f}])"
                                         if s in vs else "") for s, b in r["rollout_B"].items())


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    shortlist = [r["name"] for r in rows if r["shortlisted"]]
    starts = sorted({r["start"] for r in rows if r["shortlisted"]})
    cpu = sum(r["cpu_s"] for r in rows)
    lines = [
        "# The RL stage after BC, swept offline (bench/rl_stage_sweep.py)", "",
        f"**Offline only**: no rollout was run for this table. Scale `{args.scale}` "
        f"({SCALES[args.scale]}), data {', '.join(p.name for p in args.data)}, action-v2, MLP. "
        f"Training CPU time of the candidates below: {cpu / 60:.1f} CPU-min.", "",
        f"Ranked by the nearest-behaviour return: under each of {OBJECTIVES} objectives per setting, the "
        f"mean return of the {NEAREST_K} validation trajectories whose actions the policy is closest to "
        "(agent/offline_ranking.py). Drift: mean |action − BC start's action| on validation states "
        "(action units); the bound is measured on training states during training. FQE returns compare only "
        "at equal FQE steps (the BC starts ran TrainConfig's default); a candidate that kept 0 actor steps is "
        "its BC start's actor under the candidates' FQE budget.", "",
        f"Shortlist for real selection rollouts (paired against their BC start {', '.join(starts) or '—'}, "
        f"seeds {SELECT_ROLLOUT_SEED}.., the lead's to run): **{', '.join(shortlist) or 'none'}**.", "",
        "| rank | candidate | swept | value | RL steps kept / asked | drift from BC (val) | nearest-behaviour "
        "return | action dist. to best | FQE return (steps) | critic value | CPU s | rollout rank | rollout B |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kept = "—" if r["rl_steps_kept"] is None else f"{r['rl_steps_kept']} / {r['rl_steps_asked']}"
        name = f"**{r['name']}**" if r["shortlisted"] else r["name"]
        lines.append(f"| {r['offline_rank']} | {name} | {r['param'] or '—'} | {_f(r['value'])} | {kept} | "
                     f"{_f(r.get('drift_from_bc'))} | {_f(r['nearest_behaviour_return'])} | "
                     f"{_f(r['action_distance_best'])} | {_f(r['fqe_return'])} ({r['fqe_steps']}) | "
                     f"{_f(r.get('critic_value'))} | "
                     f"{r['cpu_s']:.0f} | {_f(r['rollout_rank'])} | {_rollout(r)} |")
    ref = rows[0]
    lines += ["", f"Validation behaviour, same objectives: best trajectory's return "
                  f"{ref['behaviour_best_return']:.4g}, mean {ref['behaviour_mean_return']:.4g}."]
    text = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    stem = "rl_stage_sweep" if args.scale == "small" else f"rl_stage_sweep_{args.scale}"
    (args.results / f"{stem}.md").write_text(text)
    (args.results / f"{stem}.json").write_text(json.dumps({
        "offline_only": True, "scale": args.scale, "config": SCALES[args.scale], "nearest_k": NEAREST_K,
        "objectives_per_setting": OBJECTIVES, "shortlist": shortlist, "rollout_reference": starts,
        "rollout_seeds_from": SELECT_ROLLOUT_SEED, "candidates": rows}, indent=1, sort_keys=True) + "\n")
    plot(rows, args.results / f"{stem}.png")
    print(text)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from mixagent.trajectories.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, len(SWEEPS), figsize=(4.2 * len(SWEEPS), 7), squeeze=False)
    for col, (sweep, (_, start, knob, _, _)) in enumerate(SWEEPS.items()):
        pts = sorted((r for r in rows if r["sweep"] == sweep and r["drift_bound"] is not None
                      and r["name"] == f"{sweep}-{r['value']:g}"), key=lambda r: r["value"])
        base = next((r for r in rows if r["name"] == start), None)
        top, bottom = axes[0][col], axes[1][col]
        if pts:
            x = [r["value"] for r in pts]
            top.plot(x, [r["nearest_behaviour_return"] for r in pts], marker="o", label="nearest-behaviour return")
            top.plot(x, [r["fqe_return"] for r in pts], marker="s", label="FQE return")
            top.plot(x, [r.get("critic_value") for r in pts], marker="^", label="critic value")
            bottom.plot(x, [r.get("drift_from_bc") for r in pts], marker="o", label="drift from BC (val)")
            bottom.plot(x, [r["action_distance_best"] for r in pts], marker="s", label="distance to best run")
            ax2 = bottom.twinx()
            ax2.bar(x, [r["rl_steps_kept"] for r in pts], width=[v * 0.3 for v in x], alpha=0.2, color="grey")
            ax2.set_ylabel("RL steps kept (bars)")
        if base is not None:
            top.axhline(base["nearest_behaviour_return"], ls="--", color="k", lw=1, label=f"{start}: nearest-behaviour")
            bottom.axhline(base["action_distance_best"], ls="--", color="k", lw=1, label=f"{start}: distance to best")
        top.set(xscale="log", title=f"{sweep} from {start}", ylabel="return (final B)")
        bottom.set(xscale="log", xlabel=knob, ylabel="action distance")
        for ax in (top, bottom):  # the swept values as ticks, no minor-tick labels over each other
            ax.minorticks_off()
            if pts:
                ax.set_xticks([r["value"] for r in pts], [f"{r['value']:g}" for r in pts])
        top.legend(fontsize=6)
        bottom.legend(fontsize=6, loc="upper left")
    fig.suptitle("RL stage after BC: offline readings on validation trajectories (no rollouts)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
