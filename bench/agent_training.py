"""Train every algorithm on the committed trajectories, sweep CQL's conservative weight, and select
the policy to ship by offline criteria alone (validation trajectories of the training settings).

    python bench/agent_training.py                     # train all (about 1 CPU-hour), select, report
    python bench/agent_training.py --report-only       # tables from the policies already trained
    python bench/agent_training.py --rollouts 3        # + real rollouts of each candidate (math-tiny, λ=0.5)

Candidates: BC with the MLP and with the window Transformer, CQL, BC->CQL at several conservative
weights, IQL and TD3+BC, each with the same seed, split and relabelled data. For every candidate it
reports the training time, the offline selection metrics of ``agent/train.py`` (Fitted Q
Evaluation of the policy's return on the validation trajectories, the behaviour's return there,
held-out TD error, action error against the best validation trajectories), and the target share the
policy chooses at the start of a run for several objectives (the objective conditioning, read
without any rollout), and the roughness of its shares along the validation trajectories.

Selection (v3). Offline shortlist: the candidates whose start shares move monotonically the right
way with λ and whose FQE return on validation beats the behaviour's there. Then, with
``--select-rollouts N``, the shortlisted one with the best mean B in N real rollouts on a training
setting (``--rollout-setting``, math-tiny, λ = 0.5, seeds 3000.. that no benchmark compares on);
without it, the highest FQE. History: v1 (highest FQE among those that move the right way) picked
IQL, whose closed-loop schedule then jumped between stages and lost to the smooth BC policy on
math-tiny and docs-tiny (bench/results/mixing_quality.md). v2 (the smoothest along smooth
validation runs) was dropped unused: read open-loop on behaviour states, IQL's roughness (0.073)
is no higher than CQL's (0.072) or BC's (0.082), so the jumps only show in closed loop. v3 was
written after seeing math-tiny and docs-tiny; math-wide is the benchmark setting none had seen.

With ``--rollouts N`` each candidate also runs N paired seeds on math-tiny at λ = 0.5 in the real
env, so the offline ranking can be set beside the real one. Writes ``bench/results/agent_training.json``
and ``.md`` and a plot of the sweep; the selected policy is copied to ``agent/artifacts/agent``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = [ROOT / "data" / "trajectories" / "math-tiny", ROOT / "data" / "trajectories" / "code-tiny"]
OUT = ROOT / "runs" / "agent-training"
RESULTS = ROOT / "bench" / "results"
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 0.9)
CANDIDATES: dict[str, tuple[str, dict]] = {
    "bc-mlp": ("bc", {}),
    "bc-transformer": ("bc", {"encoder": "transformer"}),
    "cql": ("cql", {"conservative_weight": 5.0}),
    "bc+cql-w0.5": ("bc+cql", {"conservative_weight": 0.5}),
    "bc+cql-w2": ("bc+cql", {"conservative_weight": 2.0}),
    "bc+cql-w5": ("bc+cql", {"conservative_weight": 5.0}),
    "bc+cql-w10": ("bc+cql", {"conservative_weight": 10.0}),
    "iql": ("iql", {}),
    "td3+bc": ("td3+bc", {}),
    # not a candidate for shipping: the same BC trained for λ = 0.5 alone, so that the benchmark
    # shows what conditioning on the objective buys (bench/mixing_quality.py, "agent-lam0.5")
    "bc-lam0.5": ("bc", {"objective_range": {"spread_penalty_min": 0.5, "spread_penalty_max": 0.5,
                                             "max_weight_ratio": 1.0}}),
}
SINGLE = "bc-lam0.5"
SELECT_ROLLOUT_SEED = 3000
"""Seeds of the selection rollouts: apart from the benchmark's comparison (1000..) and grid
selection (2000..) seeds."""


def start_shares(folder: Path) -> dict[str, float]:
    """The target share the policy picks at the start of a run, per λ (equal field weights); a
    policy trained for one objective is asked with that one."""
    from mixagent.agent.onnx_policy import load_artifact
    from mixagent.trajectories import DomainSpace, Objective

    card, factory = load_artifact(folder)
    rng = card.objective_range
    space = DomainSpace.from_fields({"source": [f"s{i}" for i in range(10)], "target": ["t0", "t1"]})
    out = {}
    single = rng is not None and rng.spread_penalty_min == rng.spread_penalty_max
    for lam in LAMBDAS:
        ask = rng.spread_penalty_min if single and rng is not None else lam  # a one-objective policy: its own
        w = factory(space, 16, Objective(spread_penalty=ask)).initial_weights(space).as_array()
        out[f"lam{lam:g}"] = float(w[10:].sum())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", nargs="+", default=list(CANDIDATES))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--rollouts", type=int, default=0, help="paired real rollouts per candidate (math-tiny, λ=0.5)")
    ap.add_argument("--select-rollouts", type=int, default=0,
                    help="select among the offline shortlist by N real rollouts on the training setting")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--install", action="store_true", help="copy the selected policy to agent/artifacts/agent")
    ap.add_argument("--version", default="v2", help="the installed policy's version in its card (v1: IQL, rule v1)")
    ap.add_argument("--config", type=Path, default=None, help="TrainConfig YAML under every candidate's overrides")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the tables, JSON and plot go")
    ap.add_argument("--rollout-setting", default="math-tiny", help="setting of the --rollouts")
    args = ap.parse_args()

    from mixagent.agent.train import load_config, train
    from mixagent.console import configure_logging

    configure_logging(False)
    rows = {}
    for name in args.only:
        algo, overrides = CANDIDATES[name]
        folder = args.out / name
        if not args.report_only and not (folder / "card.json").is_file():
            cfg = load_config(args.config, name="agent", version=name.replace("+", "-"), **overrides)
            train(args.data, algo, folder, cfg, progress=sys.stderr.isatty())
        if not (folder / "card.json").is_file():
            continue
        card = json.loads((folder / "card.json").read_text())
        m = card["metrics"]
        rows[name] = {"algo": algo, **overrides, "seconds": {k.removeprefix("seconds/"): v for k, v in m.items()
                                                              if k.startswith("seconds/")},
                      "fqe_return": m.get("val/fqe_return"), "behaviour_return": m.get("val/behaviour_return"),
                      "td_error": m.get("val/td_error"), "action_error_best": m.get("val/action_error_best"),
                      "start_share": start_shares(folder)}
    if not rows:
        return 1
    bound = load_config(args.config).bc_max_roughness  # the bound the candidates' BC data was cut at
    add_share_metrics(rows, args, bound)
    if args.select_rollouts:
        add_select_rollouts(rows, args)
    selected = select(rows)
    if args.rollouts:
        add_rollouts(rows, args)
    report(rows, selected, bound, args)
    if args.install and selected:
        dest = ROOT / "agent" / "artifacts" / "agent"
        from mixagent.agent.cli import export_cmd

        shutil.rmtree(dest, ignore_errors=True)
        export_cmd(args.out / selected, out=dest, name="agent", version=args.version)
        (dest / "learner.d3").unlink(missing_ok=True)
        print(f"installed {selected} as {dest}")
    return 0


def validation_episodes(args: argparse.Namespace, max_roughness: float = float("inf")) -> object:
    """The validation trajectories (the split of agent/train.py's default seed) whose own schedule is
    at most ``max_roughness`` rough, relabelled under 4 objectives each: where candidates are
    compared without a rollout."""
    import numpy as np

    from mixagent.agent.dataset import all_copies, load_runs, policy_action_spec, roughness, split_runs
    from mixagent.agent.train import TrainConfig
    from mixagent.trajectories.contract import ObjectiveRange

    cfg = TrainConfig()
    runs, _ = load_runs(args.data)
    _, val = split_runs(runs, cfg.validation_fraction, cfg.seed)
    val = [r for r in val if roughness(r) <= max_roughness]
    return all_copies(val, 4, ObjectiveRange(max_weight_ratio=2.0), np.random.default_rng(0),
                      policy_action_spec(runs))


def add_share_metrics(rows: dict[str, dict], args: argparse.Namespace, bound: float) -> None:
    """Two readings of each candidate's target shares on validation observations, no rollout:

    * drift from behaviour cloning's (mean |Δ share|, all validation runs): CQL after BC drifting
      away from BC's schedule;
    * roughness (mean |share change| between consecutive decisions of one trajectory) along the
      smooth validation runs (those ``bound``, BC's ``bc_max_roughness``, admits: the states a
      smooth policy visits): a policy whose answer swings from one stage to the next mixes noise
      between stages, which lowers B in this env."""
    import numpy as np

    from mixagent.agent.onnx_policy import load_artifact
    from mixagent.trajectories import DomainSpace, action_to_weights

    space = DomainSpace.from_fields({"source": ["s"], "target": ["t"]})
    policies = {}
    for name in rows:
        card, factory = load_artifact(args.out / name)
        policies[name] = (card, factory(space, 16))

    def shares(name: str, obs: np.ndarray) -> np.ndarray:
        card, policy = policies[name]
        return np.array([action_to_weights(policy.act(o), space, card.action, card.action_map).as_array()[1]  # type: ignore[attr-defined]
                         for o in obs])

    everything = validation_episodes(args)
    obs = everything.observations[everything.decision_rows]
    if "bc-mlp" in rows:
        ref = shares("bc-mlp", obs)
        for name in rows:
            rows[name]["share_drift_from_bc"] = float(np.abs(shares(name, obs) - ref).mean())
    smooth = validation_episodes(args, bound)
    decisions = smooth.decision_rows
    obs, episode = smooth.observations[decisions], smooth.episode[decisions]
    same_run = episode[1:] == episode[:-1]
    for name in rows:
        rows[name]["roughness"] = float(np.abs(np.diff(shares(name, obs)))[same_run].mean()) if same_run.any() else 0.0


def monotone(shares: dict[str, float]) -> bool:
    """The start share falls (weakly) as λ rises: more spread penalty, less new-field data."""
    values = [shares[f"lam{lam:g}"] for lam in LAMBDAS]
    return all(b <= a + 0.02 for a, b in itertools.pairwise(values)) and values[0] > values[-1]


def shortlist(rows: dict[str, dict]) -> list[str]:
    """Candidates whose start shares move the right way with λ and whose FQE return on validation
    beats the behaviour's there (never the one-objective policy)."""
    return [k for k, r in rows.items()
            if k != SINGLE and r["fqe_return"] is not None and r["behaviour_return"] is not None
            and r["fqe_return"] > r["behaviour_return"] and monotone(r["start_share"])]


def select(rows: dict[str, dict]) -> str | None:
    """From the shortlist, the best mean B in the selection rollouts when they were made
    (``--select-rollouts``), else the highest FQE return."""
    ok = shortlist(rows)
    if ok and all("select_B" in rows[k] for k in ok):
        return max(ok, key=lambda k: rows[k]["select_B"][0])
    return max(ok, key=lambda k: rows[k]["fqe_return"]) if ok else None


def real_rollouts(args, names: list[str], seeds: int, first_seed: int, folder: str,
                  extra: tuple[str, ...] = ()) -> dict:
    """``names`` (and ``uniform``, the reference, and ``extra`` baselines) in the real env on
    ``--rollout-setting`` at λ = 0.5, on seeds ``first_seed``..; the harness's per-setting result."""
    from mixagent.agent.catalogue import EvaluationConfig, parse_policies
    from mixagent.agent.evaluate import evaluate
    from mixagent.agent.runner import RunnerConfig
    from mixagent.env.setting import load_setting

    tokens = ["uniform", *extra] + [f"{k}={args.out / k}" for k in names]
    cfg = EvaluationConfig(out=args.out / folder, policies=tuple(parse_policies(tokens)),
                           settings=(load_setting(args.rollout_setting),), seeds=seeds, first_seed=first_seed,
                           selection_seeds=0,
                           runner=RunnerConfig(workers=args.workers, threads=1, progress=sys.stderr.isatty()))
    [res] = evaluate(cfg)
    return res


def add_select_rollouts(rows: dict[str, dict], args) -> None:
    """Real rollouts of the shortlist on a training setting, on seeds ``SELECT_ROLLOUT_SEED``.. that
    no benchmark compares on: FQE on behaviour data cannot see what a policy does in closed loop
    (IQL's schedule jumped between stages there)."""
    from mixagent.agent.catalogue import safe_label

    names = shortlist(rows)
    if not names:
        return
    r = real_rollouts(args, names, args.select_rollouts, SELECT_ROLLOUT_SEED, "select-rollouts")["objectives"]["lam0.5"]
    for k in names:
        p, c = r["policies"][safe_label(k)], r["comparisons"][safe_label(k)]["reference"]
        rows[k]["select_B"] = [p["mean"], p["lo"], p["hi"]]
        rows[k]["select_vs_uniform"] = [c["diff"], c["lo"], c["hi"]]


def add_rollouts(rows: dict[str, dict], args) -> None:
    """Every candidate on the comparison seeds (1000..): the real ranking beside the offline one."""
    from mixagent.agent.catalogue import COMPARE_SEED, safe_label

    res = real_rollouts(args, list(rows), args.rollouts, COMPARE_SEED, "rollouts",
                        extra=("fixed-target-share:target_share=0.3",))
    r = res["objectives"]["lam0.5"]
    for k in rows:
        p, c = r["policies"][safe_label(k)], r["comparisons"][safe_label(k)]["reference"]
        rows[k]["rollout_B"] = [p["mean"], p["lo"], p["hi"]]
        rows[k]["rollout_vs_uniform"] = [c["diff"], c["lo"], c["hi"]]
        rows[k]["rollout_share"] = res["target_share"][safe_label(k)]
    rows["_reference"] = {"uniform": r["policies"]["uniform"]["mean"],
                          "fixed-0.3": r["policies"]["fixed-target-share-target_share0.3"]["mean"]}


def _ci(x: list[float] | None) -> str:
    return "—" if x is None else f"{x[0]:+.4f} [{x[1]:+.4f}, {x[2]:+.4f}]"


def report(rows: dict[str, dict], selected: str | None, bound: float, args) -> None:
    ref = rows.pop("_reference", None)
    lines = ["# Agent training (bench/agent_training.py)", "",
             f"Data: {', '.join(p.name for p in args.data)}. Selection (v3): shortlist the candidates whose start "
             "share falls as λ rises and whose FQE return on validation beats the behaviour's; pick the best "
             f"mean B in real rollouts on {args.rollout_setting} (λ = 0.5, seeds {SELECT_ROLLOUT_SEED}..) when "
             f"made, else the highest FQE. Roughness: mean |share change| per stage along the validation runs "
             f"at most {bound:g} rough. Selected: **{selected}**.", "",
             "| candidate | train s | FQE return (val) | behaviour return (val) | TD error (val) | "
             "action err (val best) | share drift from BC (val) | roughness (val) | "
             "start share λ=0 / 0.25 / 0.5 / 0.75 / 0.9 | selection rollouts: B | Δ vs uniform | "
             "real B, comparison seeds | Δ vs uniform |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        train_s = sum(v for n, v in r["seconds"].items() if n not in ("fqe", "dataset"))
        ss = " / ".join(f"{v:.2f}" for v in r["start_share"].values())
        sel, sel_vs = _ci(r.get("select_B")), _ci(r.get("select_vs_uniform"))
        real = _ci(r.get("rollout_B"))
        vs = _ci(r.get("rollout_vs_uniform"))
        fmt = lambda x: "—" if x is None else f"{x:.4g}"  # noqa: E731
        lines.append(f"| {k} | {train_s:.0f} | {fmt(r['fqe_return'])} | {fmt(r['behaviour_return'])} | "
                     f"{fmt(r['td_error'])} | {fmt(r['action_error_best'])} | {fmt(r.get('share_drift_from_bc'))} | "
                     f"{fmt(r.get('roughness'))} | "
                     f"{ss} | {sel} | {sel_vs} | {real} | {vs} |")
    if ref:
        lines += ["", f"Real rollouts, same seeds: uniform B {ref['uniform']:+.4f}, "
                      f"fixed share 0.3 B {ref['fixed-0.3']:+.4f}."]
    text = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "agent_training.md").write_text(text)
    (args.results / "agent_training.json").write_text(json.dumps({"selected": selected, "candidates": rows,
                                                                  "reference": ref}, indent=1, sort_keys=True) + "\n")
    plot(rows, args.results)
    print(text)


def plot(rows: dict[str, dict], results: Path) -> None:
    from mixagent.trajectories.plots import pyplot, save_figure

    plt = pyplot()

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for k, r in rows.items():
        a.plot(LAMBDAS, list(r["start_share"].values()), marker="o", label=k)
    a.set(xlabel="spread penalty λ", ylabel="target share at the start", title="objective conditioning")
    a.legend(fontsize=7)
    sweep = sorted((r["conservative_weight"], r) for k, r in rows.items() if k.startswith("bc+cql"))
    if sweep:
        w = [x for x, _ in sweep]
        b.plot(w, [r["fqe_return"] for _, r in sweep], marker="o", label="FQE return (val)")
        b.plot(w, [r["behaviour_return"] for _, r in sweep], ls="--", label="behaviour return (val)")
        b.set(xscale="log", xlabel="CQL conservative weight (after BC)", ylabel="return (final B)",
              title="conservative weight sweep")
        b.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, results / "agent_training.png")


if __name__ == "__main__":
    raise SystemExit(main())
