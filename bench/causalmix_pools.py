"""CausalMix's claim, tested: the best mixture for a data pool none of its fitting runs had, against
RegMix fitted on the same runs without the pool covariates, and against uniform.

    python bench/causalmix_pools.py --data data/trajectories/math-tiny-pools            # math-tiny, 3 pools
    python bench/causalmix_pools.py ... --pools full "coq=0.02,maxima=0.02" --seeds 4 --workers 2
    python bench/causalmix_pools.py ... --report-only                                   # tables from the runs made

The fitting runs come from (resumable; ~2.3–4.4 CPU-minutes a run, so 128 runs ≈ 5–9.4 CPU-hours,
≈ 2.5–4.7 hours on 2 workers):

    mixagent trajectories generate --setting configs/math-tiny.yaml --families static_dirichlet \\
        --level domain --pool draw:0.01 --n 128 --out data/trajectories/math-tiny-pools --workers 2 --threads 1

Every fitting run drew each domain's cap log-uniform in [0.01, 1], so the test pools are ones no
fitting run had: the full pool (every cap 1, the edge of that range), and fixed patterns such as a
scarce target field. Steps: fit RegMix once on the folder (the mixture alone: one artifact for every
pool) and CausalMix once per test pool (its target covariates X*); then, on every test pool, run
uniform, RegMix and CausalMix on ``--seeds`` paired seeds (the same seeds for every method, so the
same batches where the mixtures agree). Runs are trajectory records under ``OUT/runs/`` (resumed);
the table (final balanced score under the setting's objective, mean and paired difference to
uniform with its standard error) goes to ``bench/results/causalmix_pools.json`` and ``.png``.
Cost of the evaluation: pools × 3 × seeds runs (3 pools, 4 seeds: 36 runs ≈ 1.4–2.6 CPU-hours).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOLS = ("full", "coq=0.02,maxima=0.02",
         "prose=0.02,dictionary=0.02,glosses=0.02,pydocs=0.02,kerneldocs=0.02,sqldocs=0.02,pycode=0.02,"
         "licences=0.02,dialogue=0.02,jargon=0.02")
METHODS = ("uniform", "regmix", "causalmix")


def label_of(pool: str) -> str:
    """A short run-id-safe name of a test pool."""
    if pool == "full":
        return "full"
    from mixagent.trajectories.contract import stable_hash

    return "pool-" + stable_hash(pool)[:8]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "trajectories" / "math-tiny-pools")
    ap.add_argument("--pools", nargs="+", default=list(POOLS), help="test pools: 'full' or NAME=CAP,...")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-runs", type=int, default=None, help="CausalMix's minimum (default its MIN_RUNS)")
    ap.add_argument("--candidates", type=int, default=100_000, help="RegMix's scored candidates")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "causalmix_pools")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--report-only", action="store_true", help="report on the runs already made")
    args = ap.parse_args()

    import numpy as np

    from mixagent.agent.causalmix import MIN_RUNS, fit_forests, write_causalmix
    from mixagent.agent.dataset import load_runs
    from mixagent.agent.regmix import fit_regmix
    from mixagent.agent.runner import EpisodeSpec, FolderPin, RunnerConfig, run_episodes
    from mixagent.env.pools import parse_pool, pool_of
    from mixagent.env.setting import load_setting
    from mixagent.trajectories.encoding import balanced_scores
    from mixagent.trajectories.plots import pyplot, save_figure
    from mixagent.trajectories.storage import FileStore

    t0 = time.perf_counter()
    setting = load_setting(json.loads((args.data / "setting.json").read_text()))
    names = list(setting.space.names)
    runs, _ = load_runs([args.data])
    seen = {tuple(pool_of(r.trajectory.header.schedule_params, names).values()) for r in runs}
    specs = {label_of(p): parse_pool(p) for p in args.pools}
    if any(s is None or s.caps is None for s in specs.values()):
        ap.error("--pools: each test pool is 'full' or NAME=CAP,... (fixed caps)")
    pools = {label: spec.caps_for(names, 0) for label, spec in specs.items() if spec is not None}
    policies = args.out / "policies"
    if not args.report_only:
        if not (policies / "regmix" / "card.json").exists():
            fit_regmix([args.data], policies / "regmix", candidates=args.candidates, top=min(100, args.candidates))
        todo = [(label, spec) for label, spec in specs.items()
                if not (policies / f"causalmix-{label}" / "card.json").exists()]
        if todo:  # the forests are fitted once; each test pool only asks them about its own X*
            fit = fit_forests([args.data], min_runs=args.min_runs or MIN_RUNS, cache_dir=args.cache_dir)
            for label, spec in todo:
                write_causalmix(fit, policies / f"causalmix-{label}", spec)
        episodes = []
        for label, caps in pools.items():
            for method in METHODS:
                artifact = {"uniform": None, "regmix": policies / "regmix",
                            "causalmix": policies / f"causalmix-{label}"}[method]
                for seed in range(args.seeds):
                    episodes.append(EpisodeSpec(f"{method}-{label}-s{seed}", "uniform" if artifact is None else method,
                                                {}, 10_000 + seed, label=method, pool=caps,
                                                artifact=None if artifact is None else str(artifact)))
        cfg = RunnerConfig(workers=args.workers, threads=args.threads, cache_dir=args.cache_dir)
        report = run_episodes(setting, episodes, args.out / "runs", cfg,
                              pin=FolderPin("evaluation.json", pinned={"fitting_data": args.data.name}),
                              desc="causalmix pools")
        if report.failed:
            print("failed:", *report.failed, sep="\n  ")
            return 1
    # each card's seconds/fit: RegMix's fit; CausalMix's shared forests plus its pool's table
    fit_s = {d.name: json.loads((d / "card.json").read_text())["metrics"]["seconds/fit"]
             for d in sorted(policies.glob("*")) if (d / "card.json").is_file()}
    stored = {s.trajectory.header.trajectory_id: s.trajectory for s in FileStore(args.out / "runs").load_all()}
    table: dict[str, dict[str, object]] = {}
    print(f"{args.data.name}: {len(runs)} fitting runs; objective λ = {setting.objective.spread_penalty:g}; "
          f"{args.seeds} paired seeds; test pools: " + "; ".join(f"{k} = {v}" for k, v in zip(pools, args.pools,
                                                                                            strict=True)))
    print(f"{'pool':<14} {'new':>4} {'method':<10} {'B_T mean':>9} {'Δ uniform':>10} {'± se':>7}  "
          "largest shares")
    for label, caps in pools.items():
        row: dict[str, object] = {"caps": caps, "new_to_the_fit": tuple(caps.values()) not in seen}
        base = None
        for method in METHODS:
            got = [stored.get(f"{method}-{label}-s{seed}") for seed in range(args.seeds)]
            if any(t is None for t in got):
                print(f"{label:<14} {'':>4} {method:<10} missing runs (run without --report-only)")
                continue
            b = np.array([balanced_scores(t.history, setting.objective)[-1] for t in got if t is not None])
            w = got[0].history.weights[0].as_array() if got[0] is not None else np.zeros(len(names))
            top = ", ".join(f"{names[i]} {w[i]:.2f}" for i in np.argsort(w)[::-1][:3])
            base = b if method == "uniform" else base
            diff = b - base if base is not None else np.zeros_like(b)
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
            row[method] = {"final_balanced": b.tolist(), "mean": float(b.mean()), "diff_vs_uniform": float(diff.mean()),
                           "diff_se": se, "weights": dict(zip(names, w.tolist(), strict=True))}
            print(f"{label:<14} {'yes' if row['new_to_the_fit'] else 'no':>4} {method:<10} {b.mean():>+9.4f} "
                  f"{diff.mean():>+10.4f} {se:>7.4f}  {top}")
        table[label] = row
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "causalmix_pools.json").write_text(json.dumps({
        "data": args.data.name, "fitting_runs": len(runs), "seeds": args.seeds, "pools": dict(zip(pools, args.pools,
                                                                                                   strict=True)),
        "objective": setting.objective.model_dump(), "fit_seconds": fit_s, "table": table,
        "seconds": time.perf_counter() - t0}, indent=1) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, method in enumerate(METHODS):
        xs = [i + 0.27 * (j - 1) for i, lab in enumerate(table) if method in table[lab]]
        ys = [table[lab][method]["mean"] for lab in table if method in table[lab]]  # type: ignore[index]
        ax.bar(xs, ys, width=0.25, label=method)
    ax.set_xticks(range(len(table)), list(table))
    ax.set(ylabel="final balanced score (mean over seeds)", title=f"test pools, fitted on {args.data.name}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, args.results / "causalmix_pools.png")
    print(f"wrote {args.results / 'causalmix_pools.json'} and causalmix_pools.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
