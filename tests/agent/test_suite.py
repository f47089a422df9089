"""The benchmark suite's definition and its pooled statistics (numbers checked by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from mixagent.agent.report import mean_interval
from mixagent.agent.suite import (
    CELL_FLOOR,
    SUITE_OBJECTIVES,
    SUITE_SETTINGS,
    pooled_difference,
    suite_markdown,
    suite_policies,
    suite_verdict,
)


def _cell(b: dict[str, list[float]], grid: str = "grid-0.3", hand: str = "ramp-0.8-0.2") -> dict:
    return {"policies": {k: {"B": v} for k, v in b.items()}, "selected_grid": grid, "best_hand": hand}


def _results(shift: float, seeds: int = 10, bad_cell: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for s, setting in enumerate(SUITE_SETTINGS):
        objectives = {}
        for i, o in enumerate(("lam0", "lam0.5", "lam0.9")):
            base = rng.normal(0.05, 0.01, seeds)
            extra = bad_cell if (s, i) == (1, 2) else 0.0
            objectives[o] = _cell({"cand": (base + shift + extra + rng.normal(0, 0.001, seeds)).tolist(),
                                   "uniform": (base - 0.002).tolist(), "agent-v2": (base - 0.001).tolist(),
                                   "grid-0.3": base.tolist(), "ramp-0.8-0.2": (base - 0.0005).tolist()})
        out.append({"setting": setting, "objectives": objectives})
    return out


def test_the_suite_is_fixed_apart_from_its_candidates():
    assert SUITE_SETTINGS == ("proofs-tiny", "sci-fine")
    assert [o.spread_penalty for o in SUITE_OBJECTIVES] == [0.0, 0.5, 0.9]
    labels = [p.label for p in suite_policies()]
    assert labels[:4] == ["agent-v2", "uniform", "prior", "loss-softmax"]
    assert {"ramp-0.8-0.2", "grid-0.0", "grid-1.0"} <= set(labels)
    loss = next(p for p in suite_policies() if p.label == "loss-softmax")
    assert loss.params == {"temperature": 0.1, "relative": True}
    assert not any(s in ("math-tiny", "code-tiny") for s in SUITE_SETTINGS)


def test_pooled_difference_averages_cells_per_seed_then_intervals_over_seeds():
    results = _results(0.003)
    row = pooled_difference(results, "cand", "selected_grid")
    per_seed = np.mean([np.asarray(c["policies"]["cand"]["B"]) - np.asarray(c["policies"]["grid-0.3"]["B"])
                        for r in results for c in r["objectives"].values()], axis=0)
    m, lo, hi = mean_interval(per_seed.tolist())
    assert (row["diff"], row["lo"], row["hi"]) == pytest.approx((m, lo, hi))
    assert row["seeds"] == 10 and len(row["cells"]) == 6 and row["cells"][0]["against"] == "grid-0.3"
    assert row["diff"] == pytest.approx(0.003, abs=0.0008)
    # the hand schedule role resolves per cell too
    assert pooled_difference(results, "cand", "best_hand")["cells"][0]["against"] == "ramp-0.8-0.2"


def test_verdict_needs_every_pooled_bound_above_zero_and_no_cell_below_the_floor():
    assert suite_verdict(_results(0.003), "cand")["met"]
    assert not suite_verdict(_results(0.0), "cand")["met"]  # no better than the constant
    bad = suite_verdict(_results(0.006, bad_cell=-0.02), "cand")  # pooled fine, one cell far below
    assert bad["goals"][f"no cell wholly below {CELL_FLOOR}"] is False and not bad["met"]
    assert any(c.startswith("sci-fine/lam0.9") for c in bad["cells_below_floor"])
    partial = _results(0.003)
    del partial[1]["objectives"]["lam0.9"]["policies"]["cand"]
    v = suite_verdict(partial, "cand")
    assert not v["complete"] and not v["met"] and "sci-fine/lam0.9" in v["pooled"]["uniform"]["missing"]
    text = suite_markdown(_results(0.003), ["cand"])
    assert "## cand" in text and "| sci-fine | lam0.9 |" in text and "NOT met" not in text


def test_the_report_says_when_a_settings_runs_come_from_several_kinds_of_arithmetic():
    one, mixed = _results(0.003), _results(0.003)
    one[0]["numerics"] = {"x86_64 AMD EPYC (AVX2); torch 2.13.0+cpu": 40}
    mixed[0]["numerics"] = {"x86_64 AMD EPYC (AVX2); torch 2.13.0+cpu": 30,
                            "x86_64 AMD EPYC (AVX512); torch 2.13.0+cpu": 10}
    assert "kinds of arithmetic" not in suite_markdown(one, ["cand"])
    text = suite_markdown(mixed, ["cand"])
    assert "**proofs-tiny's runs come from 2 kinds of arithmetic** (" in text
    assert "(AVX512); torch 2.13.0+cpu: 10" in text
