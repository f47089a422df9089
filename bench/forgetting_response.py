"""Forgetting response: does each policy spend more on a domain the more it is being forgotten?

    python bench/forgetting_response.py        # the domain agent, agent@v2, loss-softmax and uniform

Asks every policy, at recorded states of training-setting runs (``--data``: dataset folders or run
stores; by default the domain-level folders of math-tiny and code-tiny), how the weight of each
domain moves when that domain's newest held-out loss is 1% higher (:mod:`mixagent.agent.forgetting_response`):
the elasticity ``d log w_k / d(relative loss rise)``. Positive: it replays what is forgotten;
zero: it does not look; negative: it spends less on what is forgotten (rich-get-richer). One table
per objective, per field: the mean response and the shares of positive and negative cases.

No rollout: seconds to minutes. Writes ``bench/results/forgetting_response.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POLICIES = ["agent-domain=bench/policies/agent-domain", "agent-v2=agent/artifacts/agent", "loss-softmax",
                    "uniform"]
DEFAULT_DATA = ["data/trajectories/math-tiny-domain", "data/trajectories/code-tiny-domain"]


def _get(summary: dict, field: str) -> float:
    v = (summary.get(field) or {}).get("mean")
    return float("nan") if v is None else float(v)


def _elasticity(pe: dict) -> str:
    if pe["median"] is None:
        return "— (fallback)"
    return f"{pe['median']:+.2f} [{pe['min']:+.2f}, {pe['max']:+.2f}]" + (f", {pe['fallback']} fallback"
                                                                          if pe["fallback"] else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policies", nargs="+", default=DEFAULT_POLICIES,
                    help="policies as `mixagent agent evaluate --policies` takes them")
    ap.add_argument("--data", nargs="+", default=DEFAULT_DATA, help="dataset folders whose states are asked")
    ap.add_argument("--runs", type=int, default=16, help="runs per folder (the first, by id)")
    ap.add_argument("--match", default="", help="only runs whose id starts with this (a run store holds many policies)")
    ap.add_argument("--stride", type=int, default=2, help="ask every STRIDE-th decision")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    ap.add_argument("--delta", type=float, default=None, help="relative loss rise (default: the module's 1%%)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="forgetting_response")
    args = ap.parse_args()

    from mixagent.agent.catalogue import parse_policies
    from mixagent.agent.forgetting_response import DELTA, forgetting_response, prior_elasticity
    from mixagent.agent.onnx_policy import load_artifact
    from mixagent.agent.registry import build_policy
    from mixagent.trajectories.contract import ContractError, Objective
    from mixagent.trajectories.plots import pyplot, save_figure
    from mixagent.trajectories.policy import PolicyContext
    from mixagent.trajectories.storage import FileStore

    delta = DELTA if args.delta is None else args.delta
    for flag, value, ok in (("--delta", delta, delta > 0), ("--stride", args.stride, args.stride >= 1),
                            ("--runs", args.runs, args.runs >= 1)):
        if not ok:
            print(f"error: {flag}: must be positive, got {value}", file=sys.stderr)
            return 2
    try:
        specs = parse_policies(args.policies)
        objectives = [Objective(spread_penalty=lam) for lam in args.lambdas]
    except (ContractError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    folders = []
    for d in args.data:
        store = FileStore(ROOT / d if not Path(d).is_absolute() else Path(d))
        ids = sorted(r for r in store.list() if r.startswith(args.match)) if store.records.is_dir() else []
        if not ids:
            print(f"error: --data: {d} holds no records" + (f" matching {args.match!r}" if args.match else ""),
                  file=sys.stderr)
            return 2
        folders.append((d, [store.read(rid).trajectory for rid in ids[:args.runs]]))

    rows: list[dict] = []
    loaded = {spec.label: load_artifact(spec.artifact)[1] for spec in specs if spec.artifact}  # once each

    def factory_of(spec: object, action: object) -> object:
        """One way to build every policy, an artifact's or a registry rule's, for any space."""
        if spec.label in loaded:  # type: ignore[attr-defined]
            return loaded[spec.label]  # type: ignore[attr-defined]
        return lambda space, horizon, o: build_policy(spec.policy, spec.params,  # type: ignore[attr-defined]
                                                      PolicyContext(space, horizon, action, o))  # type: ignore[arg-type]

    for lam, objective in zip(args.lambdas, objectives, strict=True):
        for spec in specs:
            for folder, trajectories in folders:
                hd = trajectories[0].header
                make = factory_of(spec, hd.action)
                try:
                    policy = make(hd.space, hd.horizon, objective)  # type: ignore[operator]
                except ContractError as e:
                    print(f"error: {spec.label} at λ = {lam} on {folder}: {e}", file=sys.stderr)
                    return 2
                resp, pers = forgetting_response(policy, [t.history for t in trajectories], delta, args.stride)
                s, q = resp.summary(), pers.summary()
                el = prior_elasticity(make, trajectories[0].history, hd.horizon, objective)  # type: ignore[arg-type]
                pe = {"median": float(np.nanmedian(el)) if np.isfinite(el).any() else None,
                      "min": float(np.nanmin(el)) if np.isfinite(el).any() else None,
                      "max": float(np.nanmax(el)) if np.isfinite(el).any() else None,
                      "fallback": int(np.isnan(el).sum())}
                rows.append({"policy": spec.label, "lambda": lam, "data": folder, "response": s, "persistence": q,
                             "prior_elasticity": pe})
                print(f"λ={lam:<4} {spec.label:<14} {Path(folder).name:<18} states {s['states']:>4} "
                      f"refused {s['refused']:>3}  response: source {_get(s, 'source'):+7.2f} target "
                      f"{_get(s, 'target'):+7.2f}  persistence: source {_get(q, 'source'):+6.2f} target "
                      f"{_get(q, 'target'):+6.2f}  prior elasticity {_elasticity(pe)}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    command = "python bench/forgetting_response.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"command": command, "delta": delta, "runs_per_folder": args.runs, "stride": args.stride, "rows": rows},
        indent=1) + "\n")

    def cell(s: dict, f: str, key: str = "mean") -> str:
        v = (s.get(f) or {}).get(key)
        return "—" if v is None else (f"{v:+.2f}" if key == "mean" else f"{v:.0%}")

    lines = ["# Forgetting response and persistence: what a policy's per-domain feedback loop does", "",
             f"`{command}`", "",
             f"At recorded states of the first {args.runs} runs of each folder (every {args.stride}. decision from the "
             "second feedback on), the policy is asked again with one domain changed at a time "
             "(`mixagent.agent.forgetting_response`):", "",
             f"- **response**: that domain's newest held-out loss {delta:.0%} higher; `d log w_k / d(relative loss "
             "rise)`. > 0 replays what is forgotten (relative loss-softmax: `(1 − w_k)·(ℓ_k/ℓ_k(0))/τ`), 0 does not "
             "look, < 0 "
             "spends less on what is forgotten. +/−: the share of (state, domain) cases with a positive/negative "
             "response.",
             f"- **persistence**: that domain's weight in every past mixture {delta:.0%} higher (renormalised); "
             "`d log w_k / d log w_k(past)`. 0 does not read its past, 1 continues it, > 1 amplifies it (a schedule "
             "drifts to a corner unless the response pulls it back).",
             "- **prior elasticity** (first decision): with the domains' priors drawn log-normal (σ = 0.5, 20 draws, "
             "the first feedback of the folder's first run), the slope of `log w_k` on `log prior_k` within each "
             "field. 0 ignores the priors, 1 follows them, > 1 exaggerates them; median [min, max]. Every training "
             "setting has equal priors.", "",
             "Means over states and the field's domains. Refused (each measure its own count): states where the "
             "guard sent a decision to the fallback, or where a domain's past weight could not move (every other "
             "domain at the weight floor); left out.", "",
             "| λ | policy | states of | states | refused | response: source | + | − | target | persistence: source "
             "| target | refused | prior elasticity |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, q = r["response"], r["persistence"]
        lines.append(f"| {r['lambda']} | {r['policy']} | {Path(r['data']).name} | {s['states']} | {s['refused']} | "
                     f"{cell(s, 'source')} | {cell(s, 'source', 'positive')} | {cell(s, 'source', 'negative')} | "
                     f"{cell(s, 'target')} | {cell(q, 'source')} | {cell(q, 'target')} | {q['refused']} | "
                     f"{_elasticity(r['prior_elasticity'])} |")
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")

    plt = pyplot()
    labels = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(2, len(args.lambdas), figsize=(4.2 * len(args.lambdas), 7), squeeze=False)
    for row, what in enumerate(("response", "persistence")):
        for ax, lam in zip(axes[row], args.lambdas, strict=True):
            for j, (folder, _) in enumerate(folders):
                vals = [next((_get(r[what], "source") for r in rows if r["policy"] == p and r["lambda"] == lam
                              and r["data"] == folder), np.nan) for p in labels]
                width = 0.8 / len(folders)
                ax.bar(np.arange(len(labels)) + width * (j - (len(folders) - 1) / 2), vals, width=width,
                       label=Path(folder).name)
            ax.axhline(0, color="k", lw=0.8)
            if what == "persistence":
                ax.axhline(1, color="k", lw=0.8, ls="--")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"λ = {lam}: {what}, source domains", fontsize=9)
    axes[0][0].set_ylabel("d log w_k / d(relative loss rise of k)")
    axes[1][0].set_ylabel("d log w_k / d log w_k(past)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, args.out / f"{args.name}.png")
    print(f"wrote {args.out / args.name}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
