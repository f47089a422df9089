"""Cross-machine runs: how far apart are two runs of the same seed and policy from one pinned base on
two CPU types?

    python bench/cross_machine_runs.py --reference bench/results/suite/runs/proofs-tiny \
        --runs /tmp/xm/runs/proofs-tiny

The suite pins its tokens and base weights (``env/pinned.py``), so two machines start every run from
the same evaluation; what still differs is the arithmetic of the continual pre-training itself
(vector units sum in another order). A paired difference between a policy run on one machine and a
baseline run on another carries that difference too. This script takes the runs present in both
stores (same run id: same policy, seed and artifact), checks that they start from the same losses,
and reports how far their final balanced scores lie apart under each objective, beside the per-seed
sd of paired differences (0.0022-0.0029 in the field-level studies), so a report can say whether
mixing the two kinds of arithmetic matters.

Writes ``bench/results/cross_machine_runs.{json,md}``; costs seconds (the runs are made elsewhere).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAIRED_SD = (0.0022, 0.0029)
"""The per-seed sd of paired differences between policies, measured on field-level studies."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", type=Path, required=True, help="a run store (one setting's folder)")
    ap.add_argument("--runs", type=Path, required=True, help="a run store with reruns of some of its runs")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="cross_machine_runs")
    args = ap.parse_args()

    from mixagent.trajectories.contract import Objective
    from mixagent.trajectories.encoding import balanced_scores
    from mixagent.trajectories.storage import FileStore

    stores = []
    for flag, folder in (("--reference", args.reference), ("--runs", args.runs)):
        store = FileStore(folder)
        if not store.records.is_dir():
            print(f"error: {flag}: {folder} holds no records", file=sys.stderr)
            return 2
        stores.append(store)
    ref, new = stores
    common = sorted(set(ref.list()) & set(new.list()))
    if not common:
        print(f"error: --runs: no run of {args.runs} is in {args.reference} (same run id)", file=sys.stderr)
        return 2
    rows = []
    for rid in common:
        a, b = ref.read(rid), new.read(rid)
        ha, hb = a.trajectory.history, b.trajectory.history
        names = list(ha.space.names)
        start = max(abs(ha.feedback[0].domain_losses[n] - hb.feedback[0].domain_losses[n]) for n in names)
        end = max(abs(ha.feedback[-1].domain_losses[n] - hb.feedback[-1].domain_losses[n]) for n in names)
        mix = float(np.abs(ha.weight_matrix() - hb.weight_matrix()).max())
        scores = {f"lam{lam:g}": (float(balanced_scores(ha, Objective(spread_penalty=lam))[-1]),
                                  float(balanced_scores(hb, Objective(spread_penalty=lam))[-1]))
                  for lam in args.lambdas}
        rows.append({"run": rid, "numerics": [a.meta.provenance.get("numerics"), b.meta.provenance.get("numerics")],
                     "start_loss_max_diff": start, "final_loss_max_diff": end, "mixture_max_diff": mix,
                     "B": {k: list(v) for k, v in scores.items()},
                     "B_diff": {k: v[1] - v[0] for k, v in scores.items()}})
    diffs = {k: np.array([r["B_diff"][k] for r in rows]) for k in rows[0]["B_diff"]}
    summary = {k: {"median_abs": float(np.median(np.abs(d))), "max_abs": float(np.abs(d).max()),
                   "mean": float(d.mean()), "sd": float(d.std(ddof=1)) if len(d) > 1 else None}
               for k, d in diffs.items()}
    same_numerics = sum(r["numerics"][0] == r["numerics"][1] for r in rows)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python bench/cross_machine_runs.py " + " ".join(sys.argv[1:])
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"command": command, "runs": rows, "summary": summary, "paired_sd": PAIRED_SD,
         "same_numerics": same_numerics}, indent=1) + "\n")
    kinds = sorted({n for r in rows for n in r["numerics"] if n})
    lines = ["# The same runs on two CPU types, from one pinned base", "", f"`{command}`", "",
             f"{len(rows)} runs present in both stores (same policy, seed and artifact); arithmetic: "
             + "; ".join(f"`{k}`" for k in kinds) + (f" ({same_numerics} pairs on the same kind)" if same_numerics
                                                     else "") + ".", "",
             "| run | start losses, max diff | final losses, max diff | mixtures, max diff | "
             + " | ".join(f"B diff, {k}" for k in diffs) + " |", "|---|---|---|---|" + "---|" * len(diffs)]
    for r in rows:
        lines.append(f"| {r['run']} | {r['start_loss_max_diff']:.2g} | {r['final_loss_max_diff']:.2g} | "
                     f"{r['mixture_max_diff']:.2g} | " + " | ".join(f"{v:+.1e}" for v in r["B_diff"].values()) + " |")
    lines += ["", "| objective | median abs diff | max abs diff | mean | sd |", "|---|---|---|---|---|"]
    for k, s in summary.items():
        sd = "—" if s["sd"] is None else f"{s['sd']:.1e}"
        lines.append(f"| {k} | {s['median_abs']:.1e} | {s['max_abs']:.1e} | {s['mean']:+.1e} | {sd} |")
    lines += ["", f"For scale: the per-seed sd of paired differences between two policies is "
              f"{PAIRED_SD[0]}–{PAIRED_SD[1]}."]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
