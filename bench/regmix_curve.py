"""How many static proxy runs RegMix needs: held-out Spearman rank correlation between its predicted
and the measured final balanced score, against the number of training runs.

    python bench/regmix_curve.py                                      # math-tiny-static, λ ∈ {0, 0.5, 0.9}
    python bench/regmix_curve.py --data data/trajectories/math-tiny-static --sizes 24 48 96 --repeats 10

Per repeat a fixed quarter of the runs is the test set; the model is fitted on the first n of the
shuffled rest (agent/regmix.py: LightGBM, the artifact's own settings). Prints a table, writes
bench/results/regmix_curve.json and regmix_curve.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "trajectories" / "math-tiny-static")
    ap.add_argument("--sizes", type=int, nargs="+", default=[24, 36, 48, 72, 96])
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    from mixagent.agent.dataset import load_runs
    from mixagent.agent.regmix import learning_curve, static_samples
    from mixagent.trajectories.contract import Objective
    from mixagent.trajectories.plots import pyplot, save_figure

    t0 = time.perf_counter()
    samples = static_samples(load_runs([args.data])[0])
    curves = {f"lam{lam:g}": learning_curve(samples, args.sizes, Objective(spread_penalty=lam), args.repeats)
              for lam in args.lambdas}
    print(f"{args.data.name}: {len(samples.runs)} static runs, {args.repeats} repeats, "
          f"{curves[next(iter(curves))][0]['test_runs']:.0f} test runs each")
    print(f"{'runs':>5} " + " ".join(f"{k:>22}" for k in curves))
    for i, n in enumerate(args.sizes[:len(next(iter(curves.values())))]):
        cells = [f"{c[i]['spearman_mean']:.3f} [{c[i]['spearman_min']:.3f}, {c[i]['spearman_max']:.3f}]"
                 for c in curves.values()]
        print(f"{n:>5} " + " ".join(f"{x:>22}" for x in cells))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "regmix_curve.json").write_text(json.dumps({
        "data": args.data.name, "static_runs": len(samples.runs), "repeats": args.repeats, "curves": curves,
        "seconds": time.perf_counter() - t0}, indent=1) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, c in curves.items():
        ax.errorbar([r["runs"] for r in c], [r["spearman_mean"] for r in c],
                    yerr=[[r["spearman_mean"] - r["spearman_min"] for r in c],
                          [r["spearman_max"] - r["spearman_mean"] for r in c]], marker="o", capsize=3, label=k)
    ax.set(xlabel="static runs fitted on", ylabel="held-out Spearman ρ (mean, min–max)",
           title=f"RegMix learning curve on {args.data.name}")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, args.out / "regmix_curve.png")
    print(f"wrote {args.out / 'regmix_curve.json'} and regmix_curve.png")


if __name__ == "__main__":
    main()
