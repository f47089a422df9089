"""CausalMix: the causal forest recovers a planted heterogeneous effect, variant A's mixture follows
it, the artifact (a JSON table) round-trips through the serving path, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mixagent.agent.causalmix import EPSILON, fit_causalmix, fit_effect, predicted_outcome, variant_a
from mixagent.agent.causalmix import effects as theta_of
from mixagent.agent.dataset import DatasetError
from mixagent.env.pools import PoolError, PoolSpec
from mixagent.trajectories import History, Objective
from mixagent.trajectories.contract import ContractError
from tests.agent.planted_pools import planted_folder

pytest.importorskip("econml")


def planted(n: int, seed: int = 0):
    """Four domains; domain 0's share helps when covariate 0 is high and hurts when it is low,
    domain 1 the other way round, domain 2 always helps a little, domain 3 always hurts a little."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 3))
    w = rng.dirichlet(np.ones(4), size=n)
    t = np.log(w + EPSILON)
    sign = np.where(x[:, 0] > 0, 1.0, -1.0)
    theta = np.stack([0.04 * sign, -0.04 * sign, np.full(n, 0.02), np.full(n, -0.02)], axis=1)
    y = (theta * t).sum(axis=1) + 0.05 * x[:, 1] + 0.005 * rng.normal(size=n)
    return x, t, y


def test_the_forest_recovers_the_sign_and_order_of_a_planted_effect():
    x, t, y = planted(240)
    est = fit_effect(x, t, y, seed=0)
    high, low = np.array([[0.7, 0.0, 0.0]]), np.array([[-0.7, 0.0, 0.0]])
    th_high, th_low = theta_of(est, high)[0], theta_of(est, low)[0]
    assert th_high[0] > 0 > th_high[1] and th_low[1] > 0 > th_low[0]
    assert th_high[2] > th_high[3] and th_low[2] > th_low[3]
    assert th_high[3] < 0 and th_low[3] < 0
    priors = np.full(4, 0.25)
    w_high, fb = variant_a(th_high, priors)
    w_low, _ = variant_a(th_low, priors)
    assert not fb and np.argmax(w_high) == 0 and np.argmax(w_low) == 1
    assert w_high[1] == w_high[3] == 0 == w_low[0] == w_low[3]  # a harmful share gets nothing (the floor, later)
    # seeded: the same data give the same forest
    assert np.array_equal(theta_of(fit_effect(x, t, y, seed=0), high), theta_of(est, high))
    # the outcome model prefers variant A's mixture to the uniform one at that pool
    assert predicted_outcome(est, high[0], w_high) > predicted_outcome(est, high[0], priors)


def test_variant_a_falls_back_to_the_priors_when_no_share_helps():
    priors = np.array([2.0, 1.0, 1.0])
    w, fallback = variant_a(np.array([-0.1, -0.2, 0.0]), priors)
    assert fallback and w.tolist() == [0.5, 0.25, 0.25]
    w, fallback = variant_a(np.array([0.3, -0.2, 0.1]), priors)
    assert not fallback and w.tolist() == pytest.approx([0.75, 0.0, 0.25])


@pytest.fixture(scope="module")
def pooled(tiny_setting, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pools") / "planted"
    planted_folder(out, tiny_setting, 120)
    return out


OBJECTIVES = (Objective(spread_penalty=0.0), Objective(spread_penalty=0.5))


@pytest.fixture(scope="module")
def artifacts(pooled, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("causalmix")
    for name, pool in (("full", None), ("scarce", PoolSpec(caps=(("tgt_a", 0.06),)))):
        fit_causalmix([pooled], root / name, pool, min_runs=100, objectives=OBJECTIVES)
    return {"full": root / "full", "scarce": root / "scarce"}


def test_variant_a_extrapolates_to_pools_no_run_had(artifacts, tiny_setting):
    names = list(tiny_setting.space.names)
    full = json.loads((artifacts["full"] / "mixtures.json").read_text())
    scarce = json.loads((artifacts["scarce"] / "mixtures.json").read_text())
    assert full["method"] == "causalmix" and full["domains"] == names
    k = names.index("tgt_a")
    for f, s in zip(full["entries"], scarce["entries"], strict=True):
        wf, ws = np.array(f["weights"]), np.array(s["weights"])
        assert wf[k] > 0.3 and ws[k] < 0.01  # tgt_a: full pool -> a large share; scarce pool -> the floor
        assert wf[names.index("src_a")] > wf[names.index("src_b")]  # src_a helps, src_b hurts
    fit = json.loads((artifacts["full"] / "fit.json").read_text())
    assert fit["target_pool"] == dict.fromkeys(names, 1.0) and fit["variant"] == "A"
    assert set(fit["target_covariates"]) == {f"{d}/{c}" for d in names
                                             for c in ("heldout_loss", "log10_tokens", "zlib_ratio", "entropy_bits")}
    assert fit["target_covariates"]["tgt_b/heldout_loss"] == pytest.approx(3.3)
    th = fit["objectives"]["lam0.5"]["theta"]
    assert th["tgt_a"] > 0 > th["src_b"] and not fit["objectives"]["lam0.5"]["fallback_to_priors"]
    assert json.loads((artifacts["scarce"] / "fit.json").read_text())["objectives"]["lam0.5"]["theta"]["tgt_a"] < 0
    assert (artifacts["full"] / "interpreter.png").stat().st_size > 10_000


def test_the_artifact_is_served_as_a_static_mixture(artifacts, tiny_setting):
    from mixagent.agent.onnx_policy import decide, load_artifact

    card, factory = load_artifact(artifacts["full"])
    assert card.kind == "mixture" and card.algorithm.startswith("causalmix-a")
    assert card.metrics["data/static_runs"] == 120
    table = json.loads((artifacts["full"] / "mixtures.json").read_text())
    space = tiny_setting.space
    d = decide(factory(space, 4, Objective(spread_penalty=0.4)), space, History(space=space))
    assert d.weights.values == pytest.approx(table["entries"][1]["weights"])
    code = ("import sys; sys.modules['econml'] = None; sys.modules['lightgbm'] = None\n"
            "from mixagent.agent.onnx_policy import load_artifact\n"
            f"card, f = load_artifact({str(artifacts['full'])!r}); print(card.kind)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "mixture", out.stderr[-2000:]
    from mixagent.trajectories import DomainSpace

    two = DomainSpace.from_fields({"source": ["a"], "target": ["b"]})
    with pytest.raises(ContractError, match="was fitted on domains"):
        factory(two, 4, Objective()).initial_weights(two)


def test_refusals_name_what_is_wrong(pooled, tmp_path):
    with pytest.raises(DatasetError, match="120 static runs; CausalMix needs at least 200"):
        fit_causalmix([pooled], tmp_path / "a", min_runs=200, objectives=OBJECTIVES[:1])
    with pytest.raises(PoolError, match="the target pool must be fixed caps"):
        fit_causalmix([pooled], tmp_path / "b", PoolSpec(), min_runs=100, objectives=OBJECTIVES[:1])
    with pytest.raises(PoolError, match=r"--pool: pool\.tgt_b: cap 0\.0001 leaves"):
        fit_causalmix([pooled], tmp_path / "c", PoolSpec(caps=(("tgt_b", 1e-4),)), min_runs=100,
                      objectives=OBJECTIVES[:1])
    with pytest.raises(PoolError, match=r"\['coq'\] are not domains"):
        fit_causalmix([pooled], tmp_path / "d", PoolSpec(caps=(("coq", 0.5),)), min_runs=100,
                      objectives=OBJECTIVES[:1])


def test_the_cli_names_what_is_missing(tiny_setting, tmp_path):
    from tests.conftest import run_mixagent

    small = tmp_path / "small"
    planted_folder(small, tiny_setting, 30)
    few = run_mixagent("agent", "causalmix", "--data", str(small), "--out", str(tmp_path / "r"))
    assert few.returncode == 2 and "30 static runs; CausalMix needs at least 64" in few.stderr, few.stderr[-2000:]
    bad = run_mixagent("agent", "causalmix", "--data", str(small), "--out", str(tmp_path / "s"), "--pool", "tgt_a")
    assert bad.returncode == 2 and "expected NAME=CAP" in bad.stderr
    missing = run_mixagent("agent", "causalmix", "--data", str(small), "--out", str(tmp_path / "t"),
                           missing=["econml"])
    assert missing.returncode == 2 and "pip install 'mixagent[methods]'" in missing.stderr
