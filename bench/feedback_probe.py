"""Feedback probe: which part of its observation makes the agent act differently on another setting.

    python bench/feedback_probe.py                          # docs-tiny explained against math-tiny, λ = 0.5
    python bench/feedback_probe.py --setting math-wide --objective spread_penalty=0.2

The benchmark shows *that* the agent's closed-loop schedule differs between settings (on docs-tiny
it cuts the target share to ~0.10 by mid-run, on math-tiny it holds ~0.35). This probe asks *why*,
without a single new rollout: it takes the agent's own benchmark runs on both settings (same seeds,
same objective), re-encodes each decision's observation, and queries the network again with one
group of features (``observation_layout``: the gains, the agent's own past mixtures, the objective
slice, ...) swapped for the reference setting's values at the same decision of the same seed. A
group whose swap moves the decisions most of the way to the reference's is what the agent reacts
to. Open loop: each query answers "what would it choose here", not what the run would then become.

A domain-level agent (a domain-set card, ``dom-v1`` tokens) is probed per domain, on the benchmark
suite's runs (``bench/results/suite/runs``): its decisions on a setting are explained against
another policy's runs on the same setting and seeds (``--reference-policy``, default uniform), by
swapping groups of token features (the domains' loss changes, those of one field only, the field
gains, its own past mixtures, the objective slice) for the values the reference's run saw at the
same decision. Beside it, the outcome per domain: each domain's relative held-out loss change over
the run under the agent and under the reference (what it forgot, what it learned)::

    python bench/feedback_probe.py --agent bench/policies/agent-domain --label agent-domain \
        --setting proofs-tiny --objective spread_penalty=0.5 --name feedback_probe_domain_proofs

Writes ``bench/results/feedback_probe.{json,md,png}`` (``--out``, ``--name``); costs seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "bench" / "results" / "mixing_quality" / "runs"
AGENT = ROOT / "agent" / "artifacts" / "agent"
MIN_GAP = 0.01
"""Below this mean difference of target share the two settings' schedules count as alike (no shares of it)."""
GROUPS = {  # probe name -> observation_layout rows swapped together
    "gains (now, last change, past)": ("gains", "gain_change", "past_gains"),
    "gains now and last change": ("gains", "gain_change"),
    "past gains (window)": ("past_gains",),
    "own mixtures (last, past)": ("last_shares", "past_shares"),
    "gains and own mixtures": ("gains", "gain_change", "past_gains", "last_shares", "past_shares"),
    "objective slice": ("spread_penalty", "field_weights", "gain_values"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setting", default="docs-tiny", help="the setting whose decisions are explained")
    ap.add_argument("--reference", default="math-tiny", help="the setting whose features are swapped in")
    ap.add_argument("--objective", default="spread_penalty=0.5")
    ap.add_argument("--agent", type=Path, default=AGENT)
    ap.add_argument("--label", default="agent",
                    help="the agent's label in the benchmark (its run names start with it)")
    ap.add_argument("--runs", type=Path, default=None,
                    help="the benchmark's runs, one folder per setting (default: the field-level benchmark's, "
                         "or the suite's for a domain-level agent)")
    ap.add_argument("--reference-policy", default="uniform",
                    help="domain level: the policy (a suite label) whose runs on --setting are the reference")
    ap.add_argument("--name", default="feedback_probe", help="output file name (.json, .md, .png)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="output folder")
    args = ap.parse_args()

    from mixagent.agent.catalogue import objective_key, parse_objective, parse_policies
    from mixagent.agent.evaluate import learned_run_id
    from mixagent.agent.onnx_policy import load_artifact
    from mixagent.trajectories.encoding import action_to_weights, observation_layout
    from mixagent.trajectories.plots import mixture_target_share, target_share
    from mixagent.trajectories.replay import history_prefix
    from mixagent.trajectories.storage import FileStore

    objective = parse_objective(args.objective)
    spec = parse_policies([f"{args.label}={args.agent}"])[0]
    ran_for = spec.fixed_objective or objective  # a one-objective policy's runs are named by its own
    digest = spec.digest()
    card, factory = load_artifact(args.agent)
    if card.domain_set:
        return domain_probe(args, objective, card, factory)
    args.runs = args.runs or RUNS

    def agent_runs(setting: str) -> dict[int, object]:
        folder = args.runs / setting
        if not (folder / "records").is_dir():
            sys.exit(f"--runs: no benchmark runs of {setting!r} in {folder}")
        return {s.trajectory.header.seed: s.trajectory for s in FileStore(folder).load_all()
                if s.path.name.startswith(learned_run_id(spec, ran_for, s.trajectory.header.seed, digest) + ".")}

    mine, ref = agent_runs(args.setting), agent_runs(args.reference)
    seeds = sorted(set(mine) & set(ref))
    if not seeds:
        sys.exit(f"no seed has the agent's runs at {objective_key(objective)} on both {args.setting} and "
                 f"{args.reference} (agent {card.ref})")

    def observations(t: object) -> tuple[object, np.ndarray]:
        h = t.history  # type: ignore[attr-defined]
        policy = factory(h.space, h.stages, objective)
        return policy, np.stack([policy.observation(history_prefix(h, i)) for i in range(h.stages)])

    def chosen_share(policy: object, obs: np.ndarray, space: object) -> np.ndarray:
        weights = [action_to_weights(policy.act(o), space, card.action, card.action_map).as_array() for o in obs]  # type: ignore[attr-defined]
        return mixture_target_share(space, np.stack(weights))  # type: ignore[arg-type]

    as_run, ref_run = f"{args.setting} as run", f"{args.reference} as run (the reference)"
    variants: dict[str, list[np.ndarray]] = {as_run: [], ref_run: []}
    variants |= {f"{args.setting}, {g} from {args.reference}": [] for g in GROUPS}
    for seed in seeds:
        pol, obs = observations(mine[seed])
        ref_pol, ref_obs = observations(ref[seed])
        space = mine[seed].history.space  # type: ignore[attr-defined]
        if obs.shape != ref_obs.shape:
            sys.exit(f"seed {seed}: observations of {args.setting} {obs.shape} and {args.reference} "
                     f"{ref_obs.shape} differ in shape (horizon or fields): nothing to swap")
        layout = observation_layout(space, card.action, card.encoder_version)
        variants[as_run].append(chosen_share(pol, obs, space))
        recorded = target_share(mine[seed].history)  # type: ignore[attr-defined]
        if not np.allclose(variants[as_run][-1], recorded, atol=1e-4):  # the probe must ask the policy that ran
            sys.exit(f"seed {seed}: {card.ref} asked again does not choose the mixtures its run recorded "
                     f"(max difference {np.abs(variants[as_run][-1] - recorded).max():.2g}): another artifact?")
        variants[ref_run].append(chosen_share(ref_pol, ref_obs, ref[seed].history.space))  # type: ignore[attr-defined]
        for g, rows in GROUPS.items():
            swapped = obs.copy()
            for r in rows:
                swapped[:, layout[r]] = ref_obs[:, layout[r]]
            variants[f"{args.setting}, {g} from {args.reference}"].append(chosen_share(pol, swapped, space))

    base, target = (np.mean(variants[k], axis=0) for k in (as_run, ref_run))
    gap = float(np.mean(target - base))
    rows_out = []
    for k, v in variants.items():
        curve = np.mean(v, axis=0)
        moved = float(np.mean(curve - base))
        rows_out.append({"variant": k, "mean_share": float(curve.mean()), "curve": curve.tolist(),
                         "second_half": float(curve[len(curve) // 2:].mean()),
                         "shift": moved, "share_of_gap_closed": moved / gap if abs(gap) >= MIN_GAP else None})
    payload = {"agent": card.ref, "gap": gap, "setting": args.setting, "reference": args.reference,
               "objective": objective_key(objective), "seeds": seeds, "variants": rows_out}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [f"# Feedback probe: {card.ref} on {args.setting} against {args.reference}, "
             f"{objective_key(objective)} (`python bench/feedback_probe.py`)", "",
             f"Seeds {seeds[0]}–{seeds[-1]} ({len(seeds)}), the agent's own benchmark runs; target share chosen at "
             "each decision when the network is asked again (open loop) with one group of features swapped.", "",
             f"Gap between the two schedules (mean target share): {gap:+.3f}"
             + ("" if abs(gap) >= MIN_GAP else f", under {MIN_GAP}: the agent acts alike on both, nothing to explain")
             + ".", "",
             "| variant | mean target share | second half | shift from as run | share of the gap closed |",
             "|---|---|---|---|---|"]
    for r in rows_out:
        closed = "" if r["share_of_gap_closed"] is None else f"{round(r['share_of_gap_closed'], 2) + 0.0:.0%}"
        lines.append(f"| {r['variant']} | {r['mean_share']:.3f} | {r['second_half']:.3f} | {r['shift']:+.3f} | "
                     f"{closed} |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    plot(rows_out, out / f"{args.name}.png", lines[0].removeprefix("# "))
    print("\n".join(lines[2:]))
    return 0


DOMAIN_GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] = {
    # probe name -> (token features, run features, the field whose domains are swapped; None: all)
    "domain losses (change since start, last stage)": (("loss_change", "loss_last"), (), None),
    "source domains' losses": (("loss_change", "loss_last"), (), "source"),
    "target domains' losses": (("loss_change", "loss_last"), (), "target"),
    "field gains": (("field_gain",), ("mean_gain", "gain_spread"), None),
    "losses and field gains": (("loss_change", "loss_last", "field_gain"), ("mean_gain", "gain_spread"), None),
    "own mixtures (window, field share)": (("share_*", "field_share"), (), None),
    "objective slice": (("field_weight", "field_value"), ("spread_penalty",), None),
    "everything": (("*",), ("*",), None),
}
"""Groups of ``dom-v1`` features swapped together (``share_*``: the whole window of past shares)."""


def domain_probe(args: argparse.Namespace, objective: object, card: object, factory: object) -> int:
    """The per-domain probe of a domain-set agent (module docstring): ``--label`` on ``--setting``
    against ``--reference-policy`` on the same seeds, both from the suite's run store."""
    from mixagent.agent.catalogue import objective_key
    from mixagent.agent.evaluate import plan_setting
    from mixagent.agent.suite import suite_config
    from mixagent.trajectories.plots import mixture_target_share
    from mixagent.trajectories.replay import history_prefix
    from mixagent.trajectories.storage import FileStore
    from mixagent.trajectories.tokens import DOMAIN_FEATURES, RUN_FEATURES, encode_tokens

    runs_root = args.runs or ROOT / "bench" / "results" / "suite" / "runs"
    cfg = suite_config(runs_root.parent, [f"{args.label}={args.agent}"], settings=[args.setting])
    setting = cfg.settings[0]
    plan = plan_setting(setting, cfg, compared_grid=set())
    labels = {p.label: p for p in cfg.policies}
    if args.reference_policy not in labels:
        sys.exit(f"--reference-policy: {args.reference_policy!r} is not a suite policy (known: {sorted(labels)})")
    ok = objective_key(objective)  # type: ignore[arg-type]
    store = FileStore(runs_root / setting.name)
    held = set(store.list()) if store.records.is_dir() else set()

    def run_of(label: str, seed: int) -> str | None:
        spec = labels[label]
        rid = plan.runs.get((label, ok if spec.learned and spec.per_objective else None, seed))
        return rid if rid in held else None

    pairs = [(seed, run_of(args.label, seed), run_of(args.reference_policy, seed)) for seed in cfg.compare_seeds]
    pairs = [(seed, a, r) for seed, a, r in pairs if a and r]
    if not pairs:
        sys.exit(f"no comparison seed has runs of both {args.label} at {ok} and {args.reference_policy} "
                 f"in {store.root}")

    def cols(names: tuple[str, ...], features: tuple[str, ...]) -> list[int]:
        return [i for i, f in enumerate(features)
                if any(n == f or (n.endswith("*") and f.startswith(n[:-1])) for n in names)]

    seeds, variants, refused = [], {}, {}  # variant -> per seed [stages, K] weights
    as_run, ref_run = f"{args.label} as run", f"{args.reference_policy} as run (the reference)"
    outcome: dict[str, list[np.ndarray]] = {args.label: [], args.reference_policy: []}
    space = None
    for seed, a_id, r_id in pairs:
        a, r = store.read(a_id).trajectory.history, store.read(r_id).trajectory.history
        space = a.space
        if r.space.names != space.names or r.stages != a.stages:
            sys.exit(f"seed {seed}: the two runs differ in domains or stages: nothing to swap")
        policy = factory(space, a.stages, objective)  # type: ignore[operator]
        horizon = a.stages
        obs = [encode_tokens(history_prefix(a, i), horizon, objective, card.encoder_version)  # type: ignore[attr-defined,arg-type]
               for i in range(a.stages)]
        ref = [encode_tokens(history_prefix(r, i), horizon, objective, card.encoder_version)  # type: ignore[attr-defined,arg-type]
               for i in range(r.stages)]
        recorded = a.weight_matrix()
        asked = []
        for i, (tok, run) in enumerate(obs):
            got = policy.decide_tokens(space, tok, run)
            asked.append(recorded[i] if isinstance(got, str) else got.as_array())  # the guard's fallback was recorded
            if not isinstance(got, str) and not np.allclose(asked[-1], recorded[i], atol=1e-4):
                sys.exit(f"seed {seed}, decision {i}: {card.ref} asked again does not choose the mixture its run "  # type: ignore[attr-defined]
                         f"recorded (max difference {np.abs(asked[-1] - recorded[i]).max():.2g}): another artifact?")
        variants.setdefault(as_run, []).append(np.stack(asked))
        variants.setdefault(ref_run, []).append(r.weight_matrix())
        source_rows = np.array([d.field == "source" for d in space.domains])
        for g, (tok_names, run_names, field) in DOMAIN_GROUPS.items():
            tc, rc = cols(tok_names, DOMAIN_FEATURES), cols(run_names, RUN_FEATURES)
            rows = (np.ones(space.size, bool) if field is None
                    else source_rows if field == "source" else ~source_rows)
            chosen, n_refused = [], 0
            for i, ((tok, run), (rtok, rrun)) in enumerate(zip(obs, ref, strict=True)):
                tok, run = tok.copy(), run.copy()
                tok[np.ix_(rows, tc)] = rtok[np.ix_(rows, tc)]
                run[rc] = rrun[rc]
                got = policy.decide_tokens(space, tok, run)
                n_refused += isinstance(got, str)
                chosen.append(recorded[i] if isinstance(got, str) else got.as_array())
            key = f"{args.label}, {g} from {args.reference_policy}'s run"
            variants.setdefault(key, []).append(np.stack(chosen))
            refused[key] = refused.get(key, 0) + n_refused
        for label, h in ((args.label, a), (args.reference_policy, r)):
            first = np.array([h.feedback[0].domain_losses[n] for n in space.names])
            last = np.array([h.feedback[-1].domain_losses[n] for n in space.names])
            outcome[label].append((last - first) / np.abs(first))
        seeds.append(seed)
    assert space is not None
    mean = {k: np.mean(v, axis=0) for k, v in variants.items()}  # [stages, K]
    share = {k: mixture_target_share(space, m) for k, m in mean.items()}
    base, target = share[as_run], share[ref_run]
    gap = float(np.mean(target - base))
    l1_base = float(np.abs(mean[as_run] - mean[ref_run]).sum(axis=1).mean())
    rows_out = []
    for k, m in mean.items():
        moved = float(np.mean(share[k] - base))
        l1 = float(np.abs(m - mean[ref_run]).sum(axis=1).mean())
        rows_out.append({"variant": k, "mean_share": float(share[k].mean()), "curve": share[k].tolist(),
                         "second_half": float(share[k][len(share[k]) // 2:].mean()), "shift": moved,
                         "share_of_gap_closed": moved / gap if abs(gap) >= MIN_GAP else None,
                         "l1_to_reference": l1, "l1_closed": 1 - l1 / l1_base if l1_base > 0 else None,
                         "refused": refused.get(k, 0), "domain_weights": m.mean(axis=0).tolist()})
    change = {label: np.mean(v, axis=0) for label, v in outcome.items()}
    payload = {"agent": card.ref, "setting": setting.name, "reference": args.reference_policy,  # type: ignore[attr-defined]
               "objective": ok, "seeds": seeds, "gap": gap, "domains": space.names,
               "fields": [d.field for d in space.domains], "variants": rows_out,
               "loss_change": {label: c.tolist() for label, c in change.items()}}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    title = (f"Feedback probe per domain: {card.ref} on {setting.name} against {args.reference_policy}'s "  # type: ignore[attr-defined]
             f"runs, {ok}")
    n = len(seeds)
    lines = [f"# {title}", "",
             f"`python bench/feedback_probe.py --agent {args.agent} --label {args.label} --setting {setting.name} "
             f"--objective {args.objective} --reference-policy {args.reference_policy}`", "",
             f"Seeds {seeds[0]}–{seeds[-1]} ({n}), the suite's own runs. Each decision is asked again (open loop) "
             f"with one group of token features swapped for what {args.reference_policy}'s run of the same seed "
             "saw at the same decision. Target share: the target field's share of the mixture; L1: the distance "
             f"of the mixture (all {space.size} domains) to {args.reference_policy}'s, averaged over decisions. "
             "A decision the guard refuses keeps the recorded mixture (counted).", "",
             f"Gap in mean target share ({args.reference_policy} − {args.label}): {gap:+.3f}; "
             f"mean L1 distance {l1_base:.3f}.", "",
             "| variant | mean target share | second half | share of the gap closed | L1 to reference | "
             "L1 closed | refused |", "|---|---|---|---|---|---|---|"]
    for r in rows_out:
        closed = "" if r["share_of_gap_closed"] is None else f"{round(r['share_of_gap_closed'], 2) + 0.0:.0%}"
        l1c = "" if r["l1_closed"] is None else f"{round(r['l1_closed'], 2) + 0.0:.0%}"
        lines.append(f"| {r['variant']} | {r['mean_share']:.3f} | {r['second_half']:.3f} | {closed} | "
                     f"{r['l1_to_reference']:.3f} | {l1c} | {r['refused']} |")
    lines += ["", "Per domain (mean over seeds): the mixture's mean weight over the run, and the relative "
              "held-out loss change from start to end (> 0 forgotten, < 0 learned).", "",
              f"| domain | field | weight, {args.label} | weight, {args.reference_policy} | "
              f"loss change, {args.label} | loss change, {args.reference_policy} |", "|---|---|---|---|---|---|"]
    wa, wr = mean[as_run].mean(axis=0), mean[ref_run].mean(axis=0)
    for k, d in enumerate(space.domains):
        lines.append(f"| {d.name} | {d.field} | {wa[k]:.3f} | {wr[k]:.3f} | {change[args.label][k]:+.2%} | "
                     f"{change[args.reference_policy][k]:+.2%} |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    plot(rows_out, out / f"{args.name}.png", title)
    print("\n".join(lines[4:]))
    return 0


def plot(rows: list[dict], path: Path, title: str) -> None:
    from mixagent.trajectories.plots import pyplot, save_figure

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, r in enumerate(rows):
        ax.plot(r["curve"], lw=2.5 if i < 2 else 1.2, ls="-" if i < 2 else "--", label=r["variant"])
    ax.set_xlabel("decision")
    ax.set_ylabel("target share")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
