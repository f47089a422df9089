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
    from mixagent.agent.domain_probe import MIN_GAP, plot_probe
    from mixagent.agent.evaluate import learned_run_id
    from mixagent.agent.onnx_policy import load_artifact
    from mixagent.trajectories.encoding import observation_layout
    from mixagent.trajectories.plots import mixture_target_share, target_share
    from mixagent.trajectories.replay import history_prefix
    from mixagent.trajectories.storage import FileStore

    objective = parse_objective(args.objective)
    spec = parse_policies([f"{args.label}={args.agent}"])[0]
    ran_for = spec.fixed_objective or objective  # a one-objective policy's runs are named by its own
    digest = spec.digest()
    card, factory = load_artifact(args.agent)
    if card.domain_set:
        return domain_probe(args, objective)
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

    refused: dict[str, int] = {}

    def chosen_share(policy: object, obs: np.ndarray, space: object, history: object, key: str) -> np.ndarray:
        """The target share the guarded policy chooses at each observation; where the guard refuses
        one, the mixture the run recorded there (counted under ``key``)."""
        recorded = history.weight_matrix()  # type: ignore[attr-defined]
        weights = []
        for i, o in enumerate(obs):
            got = policy.decide_observation(space, o)  # type: ignore[attr-defined]
            refused[key] = refused.get(key, 0) + isinstance(got, str)
            weights.append(recorded[i] if isinstance(got, str) else got.as_array())
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
        variants[as_run].append(chosen_share(pol, obs, space, mine[seed].history, as_run))  # type: ignore[attr-defined]
        recorded = target_share(mine[seed].history)  # type: ignore[attr-defined]
        if refused.get(as_run, 0) >= len(obs) * len(variants[as_run]):  # nothing left to check the artifact on
            sys.exit(f"seed {seed}: the guard of {card.ref} refuses every decision of its run: is it the artifact "
                     "that ran?")
        if not np.allclose(variants[as_run][-1], recorded, atol=1e-4):  # the probe must ask the policy that ran
            sys.exit(f"seed {seed}: {card.ref} asked again does not choose the mixtures its run recorded "
                     f"(max difference {np.abs(variants[as_run][-1] - recorded).max():.2g}): another artifact?")
        variants[ref_run].append(chosen_share(ref_pol, ref_obs, ref[seed].history.space,  # type: ignore[attr-defined]
                                              ref[seed].history, ref_run))  # type: ignore[attr-defined]
        for g, rows in GROUPS.items():
            swapped = obs.copy()
            for r in rows:
                swapped[:, layout[r]] = ref_obs[:, layout[r]]
            key = f"{args.setting}, {g} from {args.reference}"
            variants[key].append(chosen_share(pol, swapped, space, mine[seed].history, key))  # type: ignore[attr-defined]

    base, target = (np.mean(variants[k], axis=0) for k in (as_run, ref_run))
    gap = float(np.mean(target - base))
    rows_out = []
    for k, v in variants.items():
        curve = np.mean(v, axis=0)
        moved = float(np.mean(curve - base))
        rows_out.append({"variant": k, "mean_share": float(curve.mean()), "curve": curve.tolist(),
                         "second_half": float(curve[len(curve) // 2:].mean()),
                         "shift": moved, "share_of_gap_closed": moved / gap if abs(gap) >= MIN_GAP else None,
                         "refused": refused.get(k, 0)})
    payload = {"agent": card.ref, "gap": gap, "setting": args.setting, "reference": args.reference,
               "objective": objective_key(objective), "seeds": seeds, "variants": rows_out}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [f"# Feedback probe: {card.ref} on {args.setting} against {args.reference}, "
             f"{objective_key(objective)} (`python bench/feedback_probe.py`)", "",
             f"Seeds {seeds[0]}–{seeds[-1]} ({len(seeds)}), the agent's own benchmark runs; target share chosen at "
             "each decision when the network is asked again (open loop) with one group of features swapped. A "
             "decision the guard refuses keeps the mixture the run recorded (counted).", "",
             f"Gap between the two schedules (mean target share): {gap:+.3f}"
             + ("" if abs(gap) >= MIN_GAP else f", under {MIN_GAP}: the agent acts alike on both, nothing to explain")
             + ".", "",
             "| variant | mean target share | second half | shift from as run | share of the gap closed | refused |",
             "|---|---|---|---|---|---|"]
    for r in rows_out:
        closed = "" if r["share_of_gap_closed"] is None else f"{round(r['share_of_gap_closed'], 2) + 0.0:.0%}"
        lines.append(f"| {r['variant']} | {r['mean_share']:.3f} | {r['second_half']:.3f} | {r['shift']:+.3f} | "
                     f"{closed} | {r['refused']} |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    plot_probe(rows_out, out / f"{args.name}.png", lines[0].removeprefix("# "))
    print("\n".join(lines[2:]))
    return 0


def domain_probe(args: argparse.Namespace, objective: object) -> int:
    """The per-domain probe of a domain-set agent (:mod:`mixagent.agent.domain_probe`) on one cell."""
    from mixagent.agent.domain_probe import plot_probe, probe_domain_agent, probe_markdown
    from mixagent.agent.errors import AgentError

    runs_root = args.runs or ROOT / "bench" / "results" / "suite" / "runs"
    try:
        payload = probe_domain_agent(runs_root, args.setting, args.label, args.agent, objective,  # type: ignore[arg-type]
                                     args.reference_policy)
    except AgentError as e:
        sys.exit(str(e))
    command = (f"python bench/feedback_probe.py --agent {args.agent} --label {args.label} --setting {args.setting} "
               f"--objective {args.objective} --reference-policy {args.reference_policy}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    text = probe_markdown(payload, command)
    (out / f"{args.name}.md").write_text(text)
    plot_probe(payload["variants"], out / f"{args.name}.png", text.splitlines()[0].removeprefix("# "))
    print("\n".join(text.splitlines()[4:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
