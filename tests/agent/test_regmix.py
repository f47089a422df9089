"""RegMix on the committed static math-tiny folder: the fit, its learning curve, the artifact (a JSON
table served with numpy, no LightGBM) and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mixagent.agent.dataset import DatasetError, load_runs
from mixagent.agent.onnx_policy import decide, load_artifact
from mixagent.agent.regmix import OBJECTIVE_GRID, fit_regmix, learning_curve, static_samples
from mixagent.agent.static_mixture import MIXTURE_FILE
from mixagent.trajectories import DomainSpace, History, Objective
from mixagent.trajectories.contract import ContractError

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "data" / "trajectories" / "math-tiny-static"


@pytest.fixture(scope="module")
def samples():
    return static_samples(load_runs([STATIC])[0])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("regmix")
    fit_regmix([STATIC], out, candidates=5_000, top=20)
    return out


def test_static_runs_only_and_enough_of_them(samples, tiny_dataset):
    assert samples.x.shape == (140, 12) and np.allclose(samples.x.sum(axis=1), 1)
    with pytest.raises(DatasetError, match="needs at least 24"):
        static_samples(samples.runs[:10])
    with pytest.raises(DatasetError, match="no static run"):
        static_samples([r for r in load_runs([tiny_dataset])[0] if r.run_id.startswith("dirichlet")])


def test_the_learning_curve_ranks_held_out_mixtures_better_with_more_runs(samples):
    rows = learning_curve(samples, [24, 96], Objective(spread_penalty=0.5), repeats=3)
    assert [r["runs"] for r in rows] == [24.0, 96.0]
    assert rows[1]["spearman_mean"] > rows[0]["spearman_mean"] > 0.5  # measured: 0.88 -> 0.93
    assert rows[0]["test_runs"] == 35.0


def test_the_artifact_serves_the_nearest_objectives_mixture(artifact):
    table = json.loads((artifact / MIXTURE_FILE).read_text())
    assert [e["objective"]["spread_penalty"] for e in table["entries"]] == [o.spread_penalty for o in OBJECTIVE_GRID]
    card, factory = load_artifact(artifact)
    assert card.kind == "mixture" and card.domains == table["domains"]
    space = load_runs([STATIC])[0][0].trajectory.header.space
    for lam, entry in ((0.44, 4), (0.9, 9), (0.0, 0)):
        d = decide(factory(space, 16, Objective(spread_penalty=lam)), space, History(space=space))
        assert d.weights.values == pytest.approx(table["entries"][entry]["weights"])
    # the objective moves the mixture: more weight on the target field at lambda = 0 than at 0.9
    target = [i for i, dm in enumerate(space.domains) if dm.field == "target"]
    first, last = np.asarray(table["entries"][0]["weights"]), np.asarray(table["entries"][-1]["weights"])
    assert first[target].sum() > last[target].sum()
    other = DomainSpace.from_fields({"source": ["a", "b"], "target": ["c"]})
    assert "was trained on domains" in (card.space_problem(other) or "")
    with pytest.raises(ContractError, match="was fitted on domains"):
        factory(other, 16, Objective()).initial_weights(other)


def test_the_artifact_loads_without_lightgbm(artifact):
    code = ("import sys; sys.modules['lightgbm'] = None\n"
            "from mixagent.agent.onnx_policy import load_artifact\n"
            f"card, f = load_artifact({str(artifact)!r}); print(card.kind)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "mixture", out.stderr[-2000:]


def test_a_broken_table_is_refused_naming_it(artifact, tmp_path):
    from mixagent.agent.card import ArtifactError

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "card.json").write_text((artifact / "card.json").read_text())
    table = json.loads((artifact / MIXTURE_FILE).read_text())
    table["entries"][0]["weights"] = table["entries"][0]["weights"][:-1]
    (bad / MIXTURE_FILE).write_text(json.dumps(table))
    with pytest.raises(ArtifactError, match=r"entries\[0\].weights: 11 values for 12 domains"):
        load_artifact(bad)


def test_the_service_serves_the_table(artifact, tmp_path):
    import shutil

    from starlette.testclient import TestClient

    from mixagent.service.server.main import create_app
    from tests.service.conftest import ADMIN, auth, make_settings

    settings = make_settings(tmp_path)
    shutil.copytree(artifact, settings.policy_dir / "regmix")
    table = json.loads((artifact / MIXTURE_FILE).read_text())
    space = load_runs([STATIC])[0][0].trajectory.header.space
    with TestClient(create_app(settings)) as client:
        loaded = client.post("/v1/policies/load", json={"path": "regmix"}, headers=auth(ADMIN))
        assert loaded.status_code == 201 and loaded.json()["kind"] == "mixture"
        body = {"domains": [d.model_dump() for d in space.domains], "horizon": 4, "interval": 10, "policy": "regmix",
                "objective": {"spread_penalty": 0.5}}
        run = client.post("/v1/runs", json=body, headers=auth()).json()
        assert run["served_by"]["fallback"] is None
        assert list(run["weights"].values()) == pytest.approx(table["entries"][5]["weights"])
        other = {**body, "domains": [{"name": "a", "field": "source"}, {"name": "b", "field": "target"}]}
        run = client.post("/v1/runs", json=other, headers=auth()).json()
        assert run["served_by"]["fallback"] == "uniform"
        weighted = {**body, "objective": {"spread_penalty": 0.5, "field_weights": {"source": 1, "target": 2}}}
        r = client.post("/v1/runs", json=weighted, headers=auth())
        assert r.status_code == 422 and "field weights" in r.json()["detail"]


def test_the_cli_fits_and_names_what_is_missing(tmp_path):
    from tests.conftest import run_mixagent

    ok = run_mixagent("agent", "regmix", "--data", str(STATIC), "--out", str(tmp_path / "r"), "--candidates", "2000",
                      "--top", "10")
    assert ok.returncode == 0 and "fitted on 140 static runs" in ok.stdout, ok.stderr[-2000:]
    assert (tmp_path / "r" / "model-lam0.5.txt").read_text().startswith("tree")  # LightGBM's text format
    bad = run_mixagent("agent", "regmix", "--data", str(STATIC), "--out", str(tmp_path / "s"), "--top", "0")
    assert bad.returncode == 2 and "--top: must be between 1" in bad.stderr
    missing = run_mixagent("agent", "regmix", "--data", str(STATIC), "--out", str(tmp_path / "t"),
                           missing=["lightgbm"])
    assert missing.returncode == 2 and "pip install 'mixagent[methods]'" in missing.stderr
