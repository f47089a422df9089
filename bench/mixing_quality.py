"""Mixing quality: the learned agent against every baseline, hand schedule and the fixed-share grid.

    python bench/mixing_quality.py                      # all settings, resumes what is there
    python bench/mixing_quality.py --settings math-tiny # one setting
    python bench/mixing_quality.py --report-only        # tables from the runs already made

Runs the evaluation harness (``mixagent agent evaluate``, ``agent/evaluate.py``) on

* ``math-tiny``: the setting most training trajectories come from (in distribution);
* ``docs-tiny``: a third target field (systems documentation) no training trajectory comes from;
* ``math-wide``: another model size and shape (2 layers, d=192) no training trajectory comes from;

each under three objectives (λ = 0.5 with equal field weights, the default; λ = 0.2; λ = 0.5 with
target weight 0.6), on ``--seeds`` paired comparison seeds, with the best grid point chosen on
``--selection-seeds`` other seeds. Policies: the bundled agent (``agent/artifacts/agent``), the same
agent trained for λ = 0.5 alone (``bench/policies/agent-lam0.5``, to show what objective
conditioning buys), the baselines, the hand schedules and the grid. No benchmark setting or
objective is used for training or model selection.

Every run is a trajectory record under ``bench/results/mixing_quality/runs/<setting>/`` (commit
them: a rerun resumes); the tables go to ``bench/results/mixing_quality.md`` and ``.json``, the plots
to ``bench/results/mixing_quality/plots/``. ``--report-name NAME`` makes a second report from the same
runs (``bench/results/NAME.{md,json}``, details and plots in ``mixing_quality/reports/NAME/``), e.g.
the replaced agent's record, or the objective-conditioning study at the ends of the trained range:

    python bench/mixing_quality.py --settings math-wide --selection-seeds 2 \
        --objectives spread_penalty=0.0 spread_penalty=0.9 --report-name mixing_quality_objectives

or more seeds on the few policies of one cell (``--only``; runs already made are reused, since a run's id
is its policy and seed):

    python bench/mixing_quality.py --settings math-wide --objectives spread_penalty=0.2 --seeds 15 \
        --selection-seeds 2 --only agent ramp-0.8-0.2 grid --report-name mixing_quality_seeds

Cost, measured with ``--selection-seeds 2 --grid-compare selected``: a setting is ~87 runs of
~1.9–2.3 CPU-minutes (uniform and prior coincide when all priors are equal, and so do fixed-0.5 and
grid-0.5): math-tiny 3.3, docs-tiny 2.7 CPU-hours.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "mixing_quality"
SETTINGS = ("math-tiny", "docs-tiny", "math-wide")
OBJECTIVES = ("spread_penalty=0.5", "spread_penalty=0.2", "spread_penalty=0.5,source=0.4,target=0.6")
AGENT = ROOT / "agent" / "artifacts" / "agent"
SINGLE = ROOT / "bench" / "policies" / "agent-lam0.5"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS))
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES))
    ap.add_argument("--agent", type=Path, default=AGENT)
    ap.add_argument("--single", type=Path, default=SINGLE, help="the agent trained for λ = 0.5 alone")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--selection-seeds", type=int, default=3)
    ap.add_argument("--grid-compare", choices=["all", "selected"], default="selected",
                    help="run every grid point on the comparison seeds, or only the one selected")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true", help="report on the runs already made")
    ap.add_argument("--report-name", default="mixing_quality",
                    help="the tables' file name in bench/results/ (e.g. mixing_quality_agent_v1 with --agent "
                         "bench/policies/agent-v1: the replaced agent's record, from its committed runs)")
    ap.add_argument("--allow-missing", action="store_true",
                    help="with --report-only: an interim report of the policies whose runs are all made")
    ap.add_argument("--only", nargs="+", metavar="LABEL_OR_GROUP",
                    help="keep only these policies, and uniform, the reference (labels such as agent or ramp-0.8-0.2, "
                         "or the groups learned, baseline, hand, grid): more seeds on a few policies, with "
                         "--report-name")
    args = ap.parse_args()

    from mixagent.agent.catalogue import EvaluationConfig, parse_objective, parse_policies
    from mixagent.agent.evaluate import evaluate
    from mixagent.agent.runner import RunnerConfig, RunnerError
    from mixagent.console import configure_logging
    from mixagent.env.setting import load_setting

    configure_logging(not sys.stderr.isatty())  # piped: one log line per finished run instead of a bar
    # learned policies first: the runner works in plan order, so an interrupted benchmark has them
    tokens = [f"agent={args.agent}"] + ([f"agent-lam0.5={args.single}"] if args.single.is_dir() else []) + ["default"]
    keep = {*args.only, "uniform"} if args.only else None  # uniform: the reference of every paired difference
    policies = tuple(p for p in parse_policies(tokens) if keep is None or p.label in keep or p.group in keep)
    if not policies:
        ap.error(f"--only: {args.only} matches no policy")
    objectives = tuple(parse_objective(o) for o in args.objectives)
    # a second report (another agent, other objectives) shares the runs but not the tables and plots
    report_dir = args.out if args.report_name == "mixing_quality" else args.out / "reports" / args.report_name
    done = []
    for name in args.settings:  # one setting at a time: each finished one is reported at once
        setting = load_setting(name)
        if args.report_only and not (args.out / "runs" / setting.name / "records").is_dir():
            print(f"{name}: no runs yet", file=sys.stderr)
            continue
        cfg = EvaluationConfig(out=args.out, policies=policies, settings=(setting,), objectives=objectives,
                               seeds=args.seeds, selection_seeds=args.selection_seeds,
                               grid_compare=args.grid_compare, report_dir=report_dir,
                               runner=RunnerConfig(workers=args.workers, threads=1, progress=sys.stderr.isatty()))
        try:
            evaluate(cfg, run=not args.report_only, allow_missing=args.allow_missing)
        except RunnerError as e:
            print(f"{name}: {e}", file=sys.stderr)
            continue
        done.append(setting)
    if not done:
        return 1
    cfg = EvaluationConfig(out=args.out, policies=policies, settings=tuple(done), objectives=objectives,
                           seeds=args.seeds, selection_seeds=args.selection_seeds, grid_compare=args.grid_compare,
                           report_dir=report_dir)
    results = evaluate(cfg, run=False, allow_missing=args.allow_missing)
    card = json.loads((args.agent / "card.json").read_text())
    cost = {res["setting"]: res["rollout_seconds"] for res in results}  # of the runs these tables use
    rows = summary_rows(results)
    write_outputs(args.out, args.report_name, results, rows, card, cost, cfg)
    print_table(rows, card, cost)
    return 0


def summary_rows(results: list[dict]) -> list[dict]:
    """One row per (setting, objective, learned policy): B, and each paired difference's interval."""
    rows = []
    for res in results:
        for ok, r in res["objectives"].items():
            for label, comp in r["comparisons"].items():
                if "goals" not in comp:
                    continue
                p = r["policies"][label]
                row = {"setting": res["setting"], "objective": ok, "policy": label, "B": p["mean"], "B_lo": p["lo"],
                       "B_hi": p["hi"], "uniform": r["policies"].get("uniform", {}).get("mean"),
                       "selected_grid": r["selected_grid"], "best_hand": r["best_hand"],
                       "goals_met": sum(comp["goals"].values()), "goals": len(comp["goals"]),
                       "fallback_share": p.get("fallback_share")}
                row["vs_learned"] = {k: [v["diff"], v["lo"], v["hi"]] for k, v in r.get("learned_pairs", {}).items()
                                     if k.startswith(f"{label} - ")}
                for name in ("reference", "best_hand", "selected_grid"):
                    if name in comp:
                        row[f"vs_{name}"] = [comp[name]["diff"], comp[name]["lo"], comp[name]["hi"]]
                others = [c for k, c in comp.items() if k not in ("goals", "selected_grid")]
                worst = min(others, key=lambda c: c["lo"]) if others else None
                row["worst_baseline"] = [worst["against"], worst["diff"], worst["lo"], worst["hi"]] if worst else None
                rows.append(row)
    return rows


def _ci(x: list[float] | None) -> str:
    return "not run yet" if x is None else f"{x[0]:+.4f} [{x[1]:+.4f}, {x[2]:+.4f}]"


def write_outputs(out: Path, name: str, results: list[dict], rows: list[dict], card: dict, cost: dict, cfg) -> None:
    payload = {"agent": {k: card.get(k) for k in ("name", "version", "algorithm", "training_data", "metrics")},
               "rollout_cpu_seconds": cost, "summary": rows, "settings": results}
    (out.parent / f"{name}.json").write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    lines = ["# Mixing quality (bench/mixing_quality.py)", "",
             f"Agent: {card['name']}@{card['version']} ({card.get('algorithm')}), trained on "
             f"{', '.join(d['setting_name'] for d in card.get('training_data', []))}. Rollout cost of these runs: "
             + ", ".join(f"{k} {v / 3600:.1f} CPU-h" for k, v in cost.items()) + ".", "",
             "| setting | objective | policy | B [95% CI] | Δ vs uniform | Δ vs best hand | Δ vs selected grid | "
             "worst paired Δ vs a baseline | goals met | decisions by the fallback |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        worst = r["worst_baseline"]
        lines.append(f"| {r['setting']} | {r['objective']} | {r['policy']} | {_ci([r['B'], r['B_lo'], r['B_hi']])} | "
                     f"{_ci(r.get('vs_reference'))} | {_ci(r.get('vs_best_hand'))} ({r['best_hand']}) | "
                     f"{_ci(r.get('vs_selected_grid'))} ({r['selected_grid']}) | "
                     f"{worst[0] + ': ' + _ci(worst[1:]) if worst else 'not run yet'} | "
                     f"{r['goals_met']}/{r['goals']} | {r['fallback_share']:.0%} |")
    incomplete = {res["setting"]: res["incomplete"] for res in results if res.get("incomplete")}
    if incomplete:
        lines += ["", "**Interim**: runs still missing for " + "; ".join(
            f"{k}: {', '.join(v)}" for k, v in incomplete.items()) + " (resume with the same command)."]
    detail = (cfg.reports / "report.md").read_text()  # written by evaluate() just before
    (out.parent / f"{name}.md").write_text("\n".join(lines) + "\n\n" + detail.split("\n", 1)[1])


def print_table(rows: list[dict], card: dict, cost: dict) -> None:
    secs = {k.removeprefix("seconds/"): v for k, v in card.get("metrics", {}).items() if k.startswith("seconds/")}
    print(f"agent {card['name']}@{card['version']} ({card.get('algorithm')}); training seconds: "
          + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()))
    print("rollout CPU-hours: " + ", ".join(f"{k} {v / 3600:.2f}" for k, v in cost.items()))
    head = (f"{'setting':<10} {'objective':<32} {'policy':<13} {'B':>8} {'vs uniform (lo)':>18} {'vs hand (lo)':>16} "
            f"{'vs grid (lo)':>16} goals")
    print(head)
    def cell(x: list[float] | None) -> str:
        return f"{'—':>17}" if x is None else f"{x[0]:+.4f} ({x[1]:+.4f})"

    for r in rows:
        print(f"{r['setting']:<10} {r['objective']:<32} {r['policy']:<13} {r['B']:+.4f} "
              f"{cell(r.get('vs_reference'))} {cell(r.get('vs_best_hand'))} {cell(r.get('vs_selected_grid'))} "
              f"{r['goals_met']}/{r['goals']}")


if __name__ == "__main__":
    raise SystemExit(main())
