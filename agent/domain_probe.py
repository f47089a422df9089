"""The feedback probe per domain: what a domain-set agent's decisions on a benchmark setting react to.

A domain-set agent reads one ``dom-v1`` token per domain (:mod:`mixagent.trajectories.tokens`). To
ask *why* its schedule on a setting differs from another policy's (and why it loses to it), the
probe takes both policies' runs of the same seeds from the suite's run store, re-encodes each of
the agent's decisions, and asks the agent again with one group of token features (the domains' loss
changes, those of one field only, the field gains, its own past mixtures, the objective slice)
swapped for the values the other policy's run saw at the same decision. A group whose swap moves
the decisions most of the way to the other policy's is what the agent reacts to. Open loop: each
query answers "what would it choose here", not what the run would then become. Beside it, the
outcome per domain: each domain's relative held-out loss change over the run under both policies.

No rollout: seconds. ``bench/feedback_probe.py`` runs it on one cell; ``bench/suite.py`` runs it on
every cell where a domain-set candidate loses, for the suite report's "where and why".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.agent.catalogue import objective_key
from mixagent.agent.errors import ArtifactError, RunnerError
from mixagent.agent.forgetting_response import forgetting_response
from mixagent.trajectories.contract import History, Objective
from mixagent.trajectories.plots import mixture_target_share
from mixagent.trajectories.replay import history_prefix
from mixagent.trajectories.tokens import DOMAIN_FEATURES, OWN_MIXTURE_FEATURES, RUN_FEATURES, encode_tokens

__all__ = ["DOMAIN_GROUPS", "MIN_GAP", "probe_domain_agent", "probe_markdown", "plot_probe", "loop_cells"]

MIN_GAP = 0.01
"""Below this mean difference of target share the two schedules count as alike (no shares of it)."""

DOMAIN_GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None]] = {
    # probe name -> (token features, run features, the field whose domains are swapped; None: all)
    "domain losses (change since start, last stage)": (("loss_change", "loss_last"), (), None),
    "source domains' losses": (("loss_change", "loss_last"), (), "source"),
    "target domains' losses": (("loss_change", "loss_last"), (), "target"),
    "field gains": (("field_gain",), ("mean_gain", "gain_spread"), None),
    "losses and field gains": (("loss_change", "loss_last", "field_gain"), ("mean_gain", "gain_spread"), None),
    "own mixtures (window, field share)": (OWN_MIXTURE_FEATURES, (), None),
    "objective slice": (("field_weight", "field_value"), ("spread_penalty",), None),
    "everything": (("*",), ("*",), None),
}
"""Groups of ``dom-v1`` features swapped together (``share_*``: the whole window of past shares)."""


def _columns(names: Sequence[str], features: Sequence[str]) -> list[int]:
    return [i for i, f in enumerate(features)
            if any(n == f or (n.endswith("*") and f.startswith(n[:-1])) for n in names)]


def _loss_change(h: History) -> np.ndarray:
    first = np.array([h.feedback[0].domain_losses[n] for n in h.space.names])
    last = np.array([h.feedback[-1].domain_losses[n] for n in h.space.names])
    return (last - first) / np.abs(first)  # type: ignore[no-any-return]


def probe_domain_agent(runs_root: Path, setting: str, label: str, artifact: Path, objective: Objective,
                       reference: str = "uniform") -> dict[str, Any]:
    """The probe of the domain-set agent ``label`` (its artifact folder ``artifact``) on ``setting``
    at ``objective``, against ``reference``'s runs of the same comparison seeds, both read from the
    suite's run store ``runs_root`` (``<runs_root>/<setting>/records``). Raises
    :class:`RunnerError` naming the runs that are missing or do not match (:class:`ArtifactError` for a
    card that is not domain-set)."""
    from mixagent.agent.evaluate import plan_setting  # noqa: PLC0415 - the harness loads the env's settings
    from mixagent.agent.onnx_policy import OnnxSetPolicy, load_artifact  # noqa: PLC0415
    from mixagent.agent.suite import suite_config  # noqa: PLC0415
    from mixagent.trajectories.storage import FileStore  # noqa: PLC0415

    card, factory = load_artifact(artifact)
    if not card.domain_set:
        raise ArtifactError(f"{artifact}: {card.ref} is not a domain-set card; the field-level probe is "
                              "bench/feedback_probe.py without a domain-set artifact")
    cfg = suite_config(runs_root.parent, [f"{label}={artifact}"], settings=[setting])
    plan = plan_setting(cfg.settings[0], cfg)  # every grid point on the comparison seeds: it may be the reference
    specs = {p.label: p for p in cfg.policies}
    if reference not in specs:
        raise RunnerError(f"reference: {reference!r} is not a suite policy (known: {sorted(specs)})")
    ok = objective_key(objective)
    store = FileStore(runs_root / setting)
    held = set(store.list()) if store.records.is_dir() else set()

    def run_of(name: str, seed: int) -> str | None:
        spec = specs[name]
        rid = plan.runs.get((name, ok if spec.learned and spec.per_objective else None, seed))
        return rid if rid in held else None

    found = [(s, run_of(label, s), run_of(reference, s)) for s in cfg.compare_seeds]
    pairs = [(s, a, r) for s, a, r in found if a is not None and r is not None]
    if not pairs:
        raise RunnerError(f"no comparison seed has runs of both {label} at {ok} and {reference} in {store.root}")
    as_run, ref_run = f"{label} as run", f"{reference} as run (the reference)"
    variants: dict[str, list[np.ndarray]] = {}
    refused: dict[str, int] = {}
    outcome: dict[str, list[np.ndarray]] = {label: [], reference: []}
    seeds: list[int] = []
    own: list[History] = []
    space = None
    for seed, a_id, r_id in pairs:
        a, r = store.read(a_id).trajectory.history, store.read(r_id).trajectory.history
        space = a.space
        if r.space.names != space.names or r.stages != a.stages:
            raise RunnerError(f"seed {seed}: the runs of {label} and {reference} differ in domains or stages")
        policy = factory(space, a.stages, objective)
        assert isinstance(policy, OnnxSetPolicy)
        obs = [encode_tokens(history_prefix(a, i), a.stages, objective, card.encoder_version) for i in range(a.stages)]
        ref = [encode_tokens(history_prefix(r, i), r.stages, objective, card.encoder_version) for i in range(r.stages)]
        recorded = a.weight_matrix()
        asked = []
        for i, (tok, run) in enumerate(obs):
            got = policy.decide_tokens(space, tok, run)
            asked.append(recorded[i] if isinstance(got, str) else got.as_array())  # the fallback's was recorded
            if not isinstance(got, str) and not np.allclose(asked[-1], recorded[i], atol=1e-4):
                raise RunnerError(
                    f"seed {seed}, decision {i}: {card.ref} asked again does not choose the mixture its run recorded "
                    f"(max difference {np.abs(asked[-1] - recorded[i]).max():.2g}): another artifact?")
        variants.setdefault(as_run, []).append(np.stack(asked))
        variants.setdefault(ref_run, []).append(r.weight_matrix())
        source = np.array([d.field == "source" for d in space.domains])
        for g, (tok_names, run_names, field) in DOMAIN_GROUPS.items():
            tc, rc = np.array(_columns(tok_names, DOMAIN_FEATURES)), np.array(_columns(run_names, RUN_FEATURES), int)
            rows = np.ones(space.size, bool) if field is None else source if field == "source" else ~source
            chosen, n_refused = [], 0
            for i, ((tok, run), (rtok, rrun)) in enumerate(zip(obs, ref, strict=True)):
                tok, run = tok.copy(), run.copy()
                tok[np.ix_(rows, tc)] = rtok[np.ix_(rows, tc)]
                run[rc] = rrun[rc]
                got = policy.decide_tokens(space, tok, run)
                n_refused += isinstance(got, str)
                chosen.append(recorded[i] if isinstance(got, str) else got.as_array())
            key = f"{label}, {g} from {reference}'s run"
            variants.setdefault(key, []).append(np.stack(chosen))
            refused[key] = refused.get(key, 0) + n_refused
        outcome[label].append(_loss_change(a))
        outcome[reference].append(_loss_change(r))
        seeds.append(seed)
        own.append(a)
    assert space is not None
    response, persistence = forgetting_response(policy, own, stride=2)  # the loop it ran, at its own states
    mean = {k: np.mean(v, axis=0) for k, v in variants.items()}  # [stages, K]
    share = {k: mixture_target_share(space, m) for k, m in mean.items()}
    gap = float(np.mean(share[ref_run] - share[as_run]))
    l1_base = float(np.abs(mean[as_run] - mean[ref_run]).sum(axis=1).mean())
    rows_out = []
    for k, m in mean.items():
        moved = float(np.mean(share[k] - share[as_run]))
        l1 = float(np.abs(m - mean[ref_run]).sum(axis=1).mean())
        rows_out.append({"variant": k, "mean_share": float(share[k].mean()), "curve": share[k].tolist(),
                         "second_half": float(share[k][len(share[k]) // 2:].mean()), "shift": moved,
                         "share_of_gap_closed": moved / gap if abs(gap) >= MIN_GAP else None,
                         "l1_to_reference": l1, "l1_closed": 1 - l1 / l1_base if l1_base > 0 else None,
                         "refused": refused.get(k, 0), "domain_weights": m.mean(axis=0).tolist()})
    return {"agent": card.ref, "label": label, "artifact": str(artifact), "setting": setting, "reference": reference,
            "objective": ok, "seeds": seeds, "gap": gap, "l1": l1_base, "domains": list(space.names),
            "fields": [d.field for d in space.domains], "variants": rows_out,
            "loss_change": {name: np.mean(v, axis=0).tolist() for name, v in outcome.items()},
            "feedback_loop": {"response": response.summary(), "persistence": persistence.summary()}}


def _pct(x: float | None) -> str:
    return "" if x is None else f"{round(x, 2) + 0.0:.0%}"


def loop_cells(p: dict[str, Any]) -> tuple[str, str]:
    """The source domains' mean forgetting response and persistence of a probe's agent, formatted."""
    loop = p.get("feedback_loop") or {}
    cells = []
    for what in ("response", "persistence"):
        v = ((loop.get(what) or {}).get("source") or {}).get("mean")
        cells.append("—" if v is None else f"{v:+.2f}")
    return cells[0], cells[1]


def _loop_lines(p: dict[str, Any]) -> list[str]:
    response, persistence = loop_cells(p)
    if response == "—":
        return []
    return [f"Its feedback loop at its own states (`mixagent.agent.forgetting_response`, source domains): a domain's "
            f"weight moves by {response} (log) per unit relative rise of its newest loss (relative loss-softmax: about "
            f"+9; > 0 replays what is forgotten), and by {persistence} per unit of its own weight in the past "
            "mixtures (1: it continues its past).", ""]


def probe_markdown(p: dict[str, Any], command: str) -> str:
    """The probe as a Markdown page: the swaps, then the per-domain weights and loss changes."""
    label, ref = p["label"], p["reference"]
    seeds = p["seeds"]
    lines = [f"# Feedback probe per domain: {p['agent']} on {p['setting']} against {ref}'s runs, {p['objective']}", "",
             f"`{command}`", "",
             f"Seeds {seeds[0]}–{seeds[-1]} ({len(seeds)}), the suite's own runs. Each decision is asked again (open "
             f"loop) with one group of token features swapped for what {ref}'s run of the same seed saw at the same "
             "decision. Target share: the target field's share of the mixture; L1: the distance of the mixture (all "
             f"{len(p['domains'])} domains) to {ref}'s, averaged over decisions. A decision the guard refuses keeps "
             "the recorded mixture (counted).", "",
             f"Gap in mean target share ({ref} − {label}): {p['gap']:+.3f}; mean L1 distance {p['l1']:.3f}.", "",
             *_loop_lines(p),
             "| variant | mean target share | second half | share of the gap closed | L1 to reference | L1 closed "
             "| refused |", "|---|---|---|---|---|---|---|"]
    for r in p["variants"]:
        lines.append(f"| {r['variant']} | {r['mean_share']:.3f} | {r['second_half']:.3f} | "
                     f"{_pct(r['share_of_gap_closed'])} | {r['l1_to_reference']:.3f} | {_pct(r['l1_closed'])} | "
                     f"{r['refused']} |")
    lines += ["", "Per domain (mean over seeds): the mixture's mean weight over the run, and the relative held-out "
              "loss change from start to end (> 0 forgotten, < 0 learned).", "",
              f"| domain | field | weight, {label} | weight, {ref} | loss change, {label} | loss change, {ref} |",
              "|---|---|---|---|---|---|"]
    w = {r["variant"]: r["domain_weights"] for r in p["variants"]}
    wa, wr = w[f"{label} as run"], w[f"{ref} as run (the reference)"]
    ca, cr = p["loss_change"][label], p["loss_change"][ref]
    for k, (name, field) in enumerate(zip(p["domains"], p["fields"], strict=True)):
        lines.append(f"| {name} | {field} | {wa[k]:.3f} | {wr[k]:.3f} | {ca[k]:+.2%} | {cr[k]:+.2%} |")
    return "\n".join(lines) + "\n"


def plot_probe(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Each variant's target share over the decisions (the two runs bold, the swaps dashed)."""
    from mixagent.trajectories.plots import pyplot, save_figure  # noqa: PLC0415

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
