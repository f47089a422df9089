"""AirRep's encoder for domain mixing: probe runs from the base model, the encoder trained on them with
AirRep's ranking loss, and its held-out rank correlation beside simple baselines.

    python bench/airrep_probes.py --n 120                # collect (resumable), fit, report
    python bench/airrep_probes.py --n 120 --install      # and ship the encoder (agent/artifacts/airrep-math-tiny/)
    python bench/airrep_probes.py --fit-only             # refit and report on the stored probes

1. Probes (``agent/airrep_probes.py``): n seeded random domain subsets; each trains the base model of
   ``--setting`` for one interval on the subset's domains and measures every domain's and field's
   held-out loss drop. One JSON line per probe in ``OUT/probes.jsonl`` as it finishes (rerun to
   resume), with its CPU-seconds.
2. Features: ``--feature-rows`` training windows per domain through the base model, mean-pooled last
   hidden states (``OUT/features.npz``).
3. The encoder (``agent/airrep_encoder.py``) is trained on a seeded ``1 − --test-fraction`` of the
   subsets; on the rest its group scores are ranked against the measured field drops (Spearman per
   field, then the mean, AirRep's LDS). Beside it, with nothing fitted on the held-out subsets:
   ``size`` (the number of domains, its sign chosen on the training subsets), ``field share`` (the
   subset mixture's share on the field's own domains) and ``linear law`` (ridge regression of the drop
   on the subset mixture, fitted on the training subsets: Aioli's linear mixing law). The same is
   repeated over ``--splits`` split seeds. Everything is fixed before a held-out number is seen.

Writes ``OUT/report.json``, ``OUT/report.md`` and ``OUT/heldout.png`` (measured against predicted
drops of the held-out subsets). The evaluation-only suite settings are refused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FEATURE_STREAM = 0x616972726570
"""Salt of the feature sample's generator (apart from the probes' batch streams)."""
RIDGE = 1e-3
"""The linear law's ridge penalty (per subset), fixed."""


def features(backend: Any, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-window features ``[K·rows, hidden]`` of the base model, domain means ``[K, hidden]``, CPU-s."""
    from mixagent.agent.airrep_encoder import window_features

    c0 = time.process_time()
    backend.reset(seed)
    rng = np.random.default_rng([seed, FEATURE_STREAM])
    per = []
    for k in range(backend.space.size):
        one_hot = np.zeros(backend.space.size)
        one_hot[k] = 1.0
        per.append(window_features(backend.model, backend.sampler.sample(one_hot, rows, rng)))
    return np.concatenate(per), np.stack([p.mean(axis=0) for p in per]), time.process_time() - c0


def decision_noise(backend: Any, enc: Any, x: np.ndarray, rows: int, repeats: int, seed: int) -> dict[str, Any]:
    """How much the policy's influences move when they come from ``rows`` windows per domain (its
    per-decision sample) instead of the encoder's feature sample: at the base, ``repeats`` draws,
    the Spearman of each draw's objective-weighted influence (equal field weights) with the full
    sample's, and the largest share change of α (β = 1)."""
    from mixagent.agent.airrep import airrep_weights
    from mixagent.agent.airrep_encoder import domain_features, spearman

    space = backend.space
    c = np.full(len(space.fields), 1 / len(space.fields))
    full = c @ enc.field_influence(space, x)
    alpha = airrep_weights(space.priors(), full, 1.0)
    backend.reset(seed)
    rhos, moves = [], []
    for r in range(repeats):
        rng = np.random.default_rng([seed, FEATURE_STREAM, r + 1])
        batches = [backend.sampler.sample(np.eye(space.size)[k], rows, rng) for k in range(space.size)]
        infl = c @ enc.field_influence(space, domain_features(backend.model, batches))
        rhos.append(spearman(infl, full))
        moves.append(float(np.abs(airrep_weights(space.priors(), infl, 1.0) - alpha).max()))
    return {"rows": rows, "repeats": repeats, "spearman_with_full_sample": rhos, "max_alpha_change": moves,
            "alpha_full_sample": dict(zip(space.names, alpha.tolist(), strict=True))}


def ridge_law(w: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``A`` ``[K, Q]`` with ``y ≈ w @ A`` (ridge, ``RIDGE·n``): the linear mixing law."""
    k = w.shape[1]
    return np.linalg.solve(w.T @ w + RIDGE * len(w) * np.eye(k), w.T @ y)


def evaluate_split(space: Any, x: np.ndarray, sample: np.ndarray, probes: list[dict[str, Any]], test: np.ndarray,
                   spec: Any, card: dict[str, Any]) -> dict[str, Any]:
    """Fit on the subsets not in ``test``; rank the ``test`` subsets by every predictor."""
    from mixagent.agent.airrep_encoder import field_queries, group_scores, spearman, train_encoder

    names = list(space.names)
    members = np.array([[n in p["subset"] for n in names] for p in probes])
    w = np.array([p["weights"] for p in probes])
    fdrop = np.array([p["field_drop"] for p in probes])
    ddrop = np.array([p["domain_drop"] for p in probes])
    train = np.setdiff1d(np.arange(len(probes)), test)
    enc, curve = train_encoder(space, x, sample, members[train], fdrop[train], ddrop[train], spec, card)
    pred = group_scores(enc.field_influence(space, x), members)  # [n, F]
    pred_dom = group_scores(enc.influence(x, x), members)  # [n, K]: each domain's own loss as the query
    size = members.sum(axis=1).astype(float)
    fm = space.field_matrix()
    share = w @ fm.T  # [n, F]
    law = w @ ridge_law(w[train], fdrop[train])
    out: dict[str, Any] = {"fields": {}, "encoder": enc, "curve": curve, "pred": pred, "law": law, "share": share}
    rows = {"encoder": pred, "linear law": law, "field share": share}
    for f, field in enumerate(space.fields):
        sign = np.sign(spearman(size[train], fdrop[train, f])) or 1.0
        cell = {label: spearman(p[test, f], fdrop[test, f]) for label, p in rows.items()}
        cell["size"] = spearman(sign * size[test], fdrop[test, f])
        cell["encoder (train)"] = spearman(pred[train, f], fdrop[train, f])
        out["fields"][field] = cell
    out["mean"] = {label: float(np.mean([c[label] for c in out["fields"].values()]))
                   for label in next(iter(out["fields"].values()))}
    out["domain_queries_encoder"] = float(np.mean([spearman(pred_dom[test, k], ddrop[test, k])
                                                   for k in range(len(names))]))
    out["queries"] = field_queries(space, x).shape[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="math-tiny")
    ap.add_argument("--n", type=int, default=120, help="probes (a prefix of the seeded plan)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="steps per probe (default cpt.interval)")
    ap.add_argument("--max-size", type=int, default=None, help="largest subset (default K − 1)")
    ap.add_argument("--feature-rows", type=int, default=32, help="windows per domain for the encoder's features")
    ap.add_argument("--decision-rows", type=int, default=8, help="the policy's windows per domain (noise check)")
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--splits", type=int, default=5, help="split seeds for the spread of the held-out numbers")
    ap.add_argument("--epochs", type=int, default=None, help="override TrainSpec.epochs (tests)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "airrep")
    ap.add_argument("--fit-only", action="store_true", help="no new probes: fit on those stored")
    ap.add_argument("--install", action="store_true",
                    help="write the encoder of split 0 to agent/artifacts/airrep-<setting>/encoder.json "
                         "(instead of OUT/encoder.json)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()

    import torch

    from mixagent.agent.airrep_encoder import TrainSpec, spearman
    from mixagent.agent.airrep_probes import collect_probes, read_probes
    from mixagent.agent.suite import SUITE_SETTINGS
    from mixagent.env.base import build_backend
    from mixagent.env.setting import load_setting
    from mixagent.trajectories.plots import pyplot, save_figure

    torch.set_num_threads(1)
    setting = load_setting(args.setting)
    if setting.name in SUITE_SETTINGS:
        raise SystemExit(f"--setting: {setting.name} is an evaluation-only suite setting ({', '.join(SUITE_SETTINGS)});"
                         " probes are training data")
    backend, model_description = build_backend(setting, progress=not args.no_progress)
    space = setting.space
    path = args.out / "probes.jsonl"
    t0 = time.process_time()
    if args.fit_only:
        probes = read_probes(path)[1:]
    else:
        probes = list(collect_probes(backend, path, args.n, seed=args.seed, steps=args.steps, max_size=args.max_size,
                                     progress=not args.no_progress))
    probes = probes[: args.n]
    if len(probes) < 8:
        raise SystemExit(f"{path}: {len(probes)} probes; at least 8 are needed to fit and test")
    header = read_probes(path)[0]
    sample, x, feature_cpu = features(backend, args.feature_rows, args.seed)
    np.savez_compressed(args.out / "features.npz", window=sample.astype(np.float32), domain=x.astype(np.float32))
    spec = TrainSpec(**({"epochs": args.epochs} if args.epochs else {}))
    card = {"setting": setting.name, "setting_hash": setting.hash(), "base_digest": backend.provenance()["base"],
            "corpus_digest": backend.provenance()["corpus"],
            "model": model_description, "vocab_size": int(backend.model.config.vocab_size),
            "probes": len(probes), "probe_steps": header["steps"], "feature_rows": args.feature_rows,
            "train_spec": spec.__dict__}
    n_test = max(2, round(args.test_fraction * len(probes)))
    results = []
    c1 = time.process_time()
    for split in range(args.splits):
        test = np.sort(np.random.default_rng([args.seed, split]).permutation(len(probes))[:n_test])
        results.append(evaluate_split(space, x, sample, probes, test, spec, card))
    fit_cpu = (time.process_time() - c1) / args.splits
    main_split = results[0]
    enc = main_split["encoder"]
    labels = list(main_split["mean"])
    probe_cpu = float(sum(p["cpu_s"] for p in probes))
    report: dict[str, Any] = {
        "setting": setting.name, "setting_hash": setting.hash(), "model": model_description,
        "probes": len(probes), "probe_steps": header["steps"], "test_subsets": n_test, "seed": args.seed,
        "probe_cpu_s": probe_cpu, "probe_cpu_s_each": probe_cpu / len(probes), "feature_cpu_s": feature_cpu,
        "fit_cpu_s_per_split": fit_cpu, "train_spec": spec.__dict__,
        "split0": {"fields": main_split["fields"], "mean": main_split["mean"],
                   "domain_queries_encoder": main_split["domain_queries_encoder"],
                   "final_train_loss": main_split["curve"][-1]},
        "splits": {label: [r["mean"][label] for r in results] for label in labels},
        "base_field_influence": {f: dict(zip(space.names, row, strict=True))
                                 for f, row in zip(space.fields, enc.field_influence(space, x).tolist(), strict=True)},
        "measured_singletons": {p["subset"][0]: p["field_drop"] for p in probes if len(p["subset"]) == 1},
        "decision_noise": decision_noise(backend, enc, x, args.decision_rows, 5, args.seed),
        "bench_cpu_s": time.process_time() - t0,
    }
    enc = type(enc)(enc.mean, enc.scale, enc.w_query, enc.w_data,
                    {**enc.card, "heldout_spearman": main_split["mean"]["encoder"],
                     "heldout_spearman_fields": {f: c["encoder"] for f, c in main_split["fields"].items()},
                     "test_subsets": n_test})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    dest = ROOT / "agent" / "artifacts" / f"airrep-{setting.name}" / "encoder.json" if args.install else None
    enc.save(dest or args.out / "encoder.json")
    if dest:
        print(f"installed {dest}")

    # ----- the table and the plot -------------------------------------------------------------
    lines = [f"# AirRep encoder on {setting.name}: held-out rank correlation", "",
             f"{len(probes)} probes of {header['steps']} steps from the base model ({probe_cpu:.0f} CPU-s, "
             f"{probe_cpu / len(probes):.1f} each); {n_test} held-out subsets; Spearman ρ of predicted against "
             "measured drop of each field's held-out loss.", "",
             "| predictor | " + " | ".join(space.fields) + " | mean (split 0) | mean over "
             f"{args.splits} splits [min, max] |", "|---|" + "---|" * (len(space.fields) + 2)]
    for label in labels:
        vals = report["splits"][label]
        lines.append(f"| {label} | " + " | ".join(f"{main_split['fields'][f][label]:+.3f}" for f in space.fields)
                     + f" | {main_split['mean'][label]:+.3f} | {np.mean(vals):+.3f} [{min(vals):+.3f}, "
                     f"{max(vals):+.3f}] |")
    noise = report["decision_noise"]
    lines += ["", f"Per-domain queries (each domain's own held-out loss), encoder: "
              f"{main_split['domain_queries_encoder']:+.3f}.", "",
              f"The policy's sample ({noise['rows']} windows per domain) against the encoder's "
              f"({args.feature_rows}) at the base, {noise['repeats']} draws: Spearman of the objective-weighted "
              f"influences {min(noise['spearman_with_full_sample']):+.2f} … "
              f"{max(noise['spearman_with_full_sample']):+.2f}, largest change of a share of α (β = 1) "
              f"{max(noise['max_alpha_change']):.3f}.", ""]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fdrop = np.array([p["field_drop"] for p in probes])
    test = np.sort(np.random.default_rng([args.seed, 0]).permutation(len(probes))[:n_test])
    plt = pyplot()
    fig, axes = plt.subplots(2, len(space.fields), figsize=(4.2 * len(space.fields), 7.4), squeeze=False)
    for f, field in enumerate(space.fields):
        for row, (label, pred) in enumerate((("encoder", main_split["pred"]), ("linear law", main_split["law"]))):
            ax = axes[row, f]
            train = np.setdiff1d(np.arange(len(probes)), test)
            ax.scatter(pred[train, f], fdrop[train, f], s=10, c="0.75", label="training subsets")
            ax.scatter(pred[test, f], fdrop[test, f], s=16, c="C0" if row == 0 else "C1", label="held-out subsets")
            rho = spearman(pred[test, f], fdrop[test, f])
            ax.set(title=f"{field}: {label}, held-out ρ = {rho:+.2f}", xlabel=f"predicted ({label} score)",
                   ylabel="measured drop of held-out loss (nats)")
            ax.legend(fontsize=7)
    fig.suptitle(f"AirRep on {setting.name}: {len(probes)} probes × {header['steps']} steps from the base")
    fig.tight_layout()
    save_figure(fig, args.out / "heldout.png")
    print(f"wrote {args.out}/report.json, report.md, heldout.png{'' if dest else ', encoder.json'}; "
          f"probes {probe_cpu:.0f} CPU-s, features {feature_cpu:.1f} CPU-s, fit {fit_cpu:.1f} CPU-s per split")


if __name__ == "__main__":
    main()
