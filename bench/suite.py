"""The benchmark suite (agent/suite.py): every method against the fixed baselines on two settings no
training touches, λ ∈ {0, 0.5, 0.9}, paired seeds 1000–1009.

    python bench/suite.py                                              # the baselines alone (resumes)
    python bench/suite.py --candidates agent-domain=runs/policies/domain regmix=runs/policies/regmix
    python bench/suite.py --report-only --allow-missing                # an interim report

Every run is a trajectory record under ``bench/results/suite/runs/<setting>/`` (commit them: a rerun
resumes, and a new candidate reuses every baseline run, since a run's id is its policy and seed).
Per setting the harness writes ``bench/results/suite/{results.json,report.md,plots/}`` (the
stacked-area domain schedules are ``plots/<setting>-domain-weights.png``); the suite's own pooled
verdicts go to ``bench/results/suite.md`` and ``suite.json`` and are printed.

Cost: a setting is ~153 baseline runs (uniform, prior, loss-softmax and the three hand schedules
once per seed; agent@v2 once per seed and objective; the 11 constants on 3 selection seeds, then the
selected ones on the comparison seeds) of ~2.3 CPU-minutes, about 6 CPU-hours, plus 30 runs per
objective-reading candidate (~1.2 CPU-hours).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "suite"
PINS = ROOT / "bench" / "suite_pins"
"""One pin per suite setting (``mixagent env pin``): the tokens and base weights every suite run starts
from, whatever Debian serves today (env/pinned.py says why)."""


def main() -> int:
    from mixagent.agent.suite import SUITE_SEEDS, SUITE_SELECTION_SEEDS, SUITE_SETTINGS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", nargs="*", default=[], metavar="[LABEL=]ARTIFACT_DIR",
                    help="the methods judged (artifact folders or mixagent.policies names)")
    ap.add_argument("--settings", nargs="+", default=list(SUITE_SETTINGS),
                    help="only for a smoke test: the suite is its own two settings")
    ap.add_argument("--seeds", type=int, default=SUITE_SEEDS, help="only for a smoke test")
    ap.add_argument("--selection-seeds", type=int, default=SUITE_SELECTION_SEEDS, help="only for a smoke test")
    ap.add_argument("--only", nargs="+", metavar="LABEL", help="only for a smoke test: keep these policies")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT, help="the run store and the harness reports")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results",
                    help="where suite.md and suite.json go")
    ap.add_argument("--pins", type=Path, default=PINS, help="the pinned data and base of each setting")
    ap.add_argument("--no-make-pins", dest="make_pins", action="store_false",
                    help="do not pin a setting that has no pin yet (by default this machine's build becomes its pin)")
    ap.add_argument("--report-only", action="store_true", help="report on the runs already made")
    ap.add_argument("--allow-missing", action="store_true", help="with --report-only: an interim report")
    args = ap.parse_args()

    from dataclasses import replace

    from mixagent.agent.evaluate import evaluate
    from mixagent.agent.runner import RunnerConfig, RunnerError
    from mixagent.agent.suite import suite_config, suite_markdown, suite_verdict
    from mixagent.console import configure_logging

    configure_logging(not sys.stderr.isatty())
    if not args.report_only:
        from mixagent.env.pinned import PinError, install_pin, pin_setting
        from mixagent.env.setting import load_setting

        for name in args.settings:
            setting = load_setting(name)
            pin = args.pins / setting.name
            try:
                if not pin.exists() and args.make_pins:
                    pin_setting(setting, pin, say=print)
                    print(f"{setting.name}: this machine's build is now its pin; commit {pin} with the runs")
                if pin.exists():
                    install_pin(pin, setting, say=print)
                else:
                    print(f"{setting.name}: no pin at {pin}; its runs start from this machine's own corpus "
                          "build, which follows Debian's current package versions", file=sys.stderr)
            except PinError as e:
                print(f"{setting.name}: {e}", file=sys.stderr)
                return 2
    runner = RunnerConfig(workers=args.workers, threads=1, progress=sys.stderr.isatty())
    cfg = suite_config(args.out, args.candidates, runner, args.settings, args.seeds, args.selection_seeds)
    if args.only:
        cfg = replace(cfg, policies=tuple(p for p in cfg.policies if p.label in {*args.only, "uniform"}))
    candidates = [p.label for p in cfg.policies[:len(args.candidates)]]
    done = []
    for setting in cfg.settings:  # one setting at a time: each finished one is reported at once
        try:
            evaluate(replace(cfg, settings=(setting,)), run=not args.report_only, allow_missing=args.allow_missing)
            done.append(setting)
        except RunnerError as e:
            print(f"{setting.name}: {e}", file=sys.stderr)
    if not done:
        return 1
    results = evaluate(replace(cfg, settings=tuple(done)), run=False, allow_missing=args.allow_missing)
    methods = candidates or ["agent-v2"]  # with no candidate: how the bundled agent fares
    verdicts = {m: suite_verdict(results, m) for m in methods}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "suite.md").write_text(suite_markdown(results, methods))
    (args.results / "suite.json").write_text(json.dumps({
        "settings": [s.name for s in done], "seeds": cfg.compare_seeds, "selection_seeds": cfg.select_seeds,
        "objectives": [o.model_dump() for o in cfg.objectives], "verdicts": verdicts,
        "rollout_seconds": {r["setting"]: r["rollout_seconds"] for r in results},
    }, indent=1) + "\n")
    print(f"{'method':<16} {'against':<14} {'pooled diff':>11} {'95% CI':>21} {'worst cell hi':>14}")
    for m, v in verdicts.items():
        for role, row in v["pooled"].items():
            if "diff" not in row:
                print(f"{m:<16} {role:<14} {'—':>11}")
                continue
            print(f"{m:<16} {role:<14} {row['diff']:>+11.4f} [{row['lo']:+.4f}, {row['hi']:+.4f}] "
                  f"{row['worst_cell']['hi']:>+14.4f}")
        print(f"{m:<16} goal {'met' if v['met'] else 'not met'}: " + ", ".join(
            f"{k} {'yes' if ok else 'no'}" for k, ok in v["goals"].items()))
    probes = probe_lost_cells(cfg, verdicts, args.out / "runs", args.results / "suite_probes")
    if probes:
        with (args.results / "suite.md").open("a") as f:
            f.write(probes)
    print(f"wrote {args.results / 'suite.md'} and suite.json")
    return 0


def probe_lost_cells(cfg: object, verdicts: dict[str, dict], runs: Path, out: Path) -> str:
    """Where a domain-set candidate loses (a cell whose interval lies wholly below the suite's floor),
    why: the feedback probe per domain (:mod:`mixagent.agent.domain_probe`) against the policy it
    lost to, on that cell's runs; each probe's page under ``out``. Returns the report's section."""
    from mixagent.agent.card import read_card
    from mixagent.agent.catalogue import objective_key
    from mixagent.agent.domain_probe import loop_cells, plot_probe, probe_domain_agent, probe_markdown
    from mixagent.agent.errors import AgentError
    from mixagent.agent.suite import CELL_FLOOR

    objectives = {objective_key(o): o for o in cfg.objectives}  # type: ignore[attr-defined]
    specs = {p.label: p for p in cfg.policies}  # type: ignore[attr-defined]
    lines: list[str] = []
    for method, verdict in verdicts.items():
        spec = specs.get(method)
        if spec is None or spec.artifact is None or not read_card(spec.artifact).domain_set:
            continue
        lost = {(c["setting"], c["objective"], c["against"]): c for row in verdict["pooled"].values()
                for c in row.get("cells", []) if c["hi"] < CELL_FLOOR}
        if not lost:
            continue
        lines += ["", f"## Where {method} loses, and why", "",
                  f"Every cell whose interval lies wholly below {CELL_FLOOR}, and the feedback probe per domain on its "
                  f"runs against the policy it lost to: {method} asked again (open loop) with one group of its "
                  "features taken from the other policy's run of the same seed; the share of the distance between "
                  "the two mixtures (L1) that the swap closes. A large share for its own past mixtures and a small "
                  "one for the domains' loss changes: it continues what it started and does not react to what it "
                  "causes.", "",
                  "The last two numbers are its feedback loop at its own states of the cell "
                  "(`mixagent.agent.forgetting_response`, source domains): the response of a domain's weight to a "
                  "rise of its own loss (relative loss-softmax: about +9; > 0 replays what is forgotten) and its "
                  "persistence (1: it continues its own past mixtures).", "",
                  "| cell | against | difference | own past mixtures | domains' loss changes | field gains | "
                  "response | persistence | probe |", "|---|---|---|---|---|---|---|---|---|"]
        for (setting, ok, against), cell in sorted(lost.items()):
            name = f"{method}-{setting}-{ok}-vs-{against}"
            try:
                payload = probe_domain_agent(runs, setting, method, Path(spec.artifact), objectives[ok], against)
            except AgentError as e:
                lines.append(f"| {setting}/{ok} | {against} | {cell['diff']:+.4f} [{cell['lo']:+.4f}, "
                             f"{cell['hi']:+.4f}] | — | — | — | — | — | not probed: {e} |")
                continue
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
            text = probe_markdown(payload, f"python bench/feedback_probe.py --agent {spec.artifact} --label {method} "
                                           f"--setting {setting} --objective {ok} --reference-policy {against}")
            (out / f"{name}.md").write_text(text)
            plot_probe(payload["variants"], out / f"{name}.png", text.splitlines()[0].removeprefix("# "))
            closed = {r["variant"].removeprefix(f"{method}, ").removesuffix(f" from {against}'s run"): r["l1_closed"]
                      for r in payload["variants"]}

            def pct(group: str, closed: dict = closed) -> str:
                v = closed.get(group)
                return "—" if v is None else f"{round(v, 2) + 0.0:.0%}"

            lines.append(f"| {setting}/{ok} | {against} | {cell['diff']:+.4f} [{cell['lo']:+.4f}, {cell['hi']:+.4f}] | "
                         f"{pct('own mixtures (window, field share)')} | "
                         f"{pct('domain losses (change since start, last stage)')} | {pct('field gains')} | "
                         f"{' | '.join(loop_cells(payload))} | [{name}](suite_probes/{name}.md) |")
    return "\n".join(lines) + "\n" if lines else ""


if __name__ == "__main__":
    sys.exit(main())
