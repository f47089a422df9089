"""The domain-level agent: ``dom-v1`` tokens, the permutation-equivariant network, its ONNX artifact
and the guarded policy that serves any domain space (trained here on real committed records)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mixagent.agent.card import ArtifactError, PolicyCard
from mixagent.agent.dataset import DatasetError, load_runs
from mixagent.agent.onnx_policy import OnnxSetPolicy, TrainingRange, decide, load_artifact
from mixagent.agent.set_policy import CLAMP_BAND, DomainSetNet, mixture_roughness, set_examples
from mixagent.agent.train import TrainConfig, load_config, train
from mixagent.trajectories import DomainSpace, Feedback, History, Objective, Weights
from mixagent.trajectories.contract import Domain, ObjectiveRange
from mixagent.trajectories.replay import history_prefix
from mixagent.trajectories.tokens import DOMAIN_FEATURES, RUN_FEATURES, encode_tokens

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "data" / "trajectories" / "math-tiny-static"
FAST = {"level": "domain", "bc_steps": 80, "bc_objective_draws": 4, "batch_size": 64, "transformer_d_model": 32,
        "name": "agent-domain", "version": "test"}


def permuted(history: History, perm: np.ndarray) -> History:
    """The same run with its domains listed in the order ``perm`` (feedback is keyed by name)."""
    space = DomainSpace(domains=tuple(history.space.domains[i] for i in perm))
    weights = [Weights(values=tuple(np.asarray(w.values)[perm])) for w in history.weights]
    return History(space=space, feedback=list(history.feedback), weights=weights)


def synthetic_history(space: DomainSpace, stages: int, seed: int = 0) -> History:
    """A run of ``stages`` near-uniform mixtures whose losses drift by under 1% per stage."""
    rng = np.random.default_rng(seed)
    h = History(space=space)
    losses = rng.uniform(2.5, 3.5, size=space.size)
    for t in range(stages + 1):
        h.record_feedback(Feedback(step=10 * t, tokens_seen=1000 * t,
                                   field_scores={f: -3.0 + 0.01 * t * (i + 1) for i, f in enumerate(space.fields)},
                                   domain_losses=dict(zip(space.names, losses * (1 + rng.normal(0, 0.003, space.size)),
                                                          strict=True))))
        if t < stages:
            h.record_weights(Weights.from_raw(space.priors() * rng.uniform(0.9, 1.1, size=space.size)))
    return h


@pytest.fixture(scope="module")
def static_runs():
    return load_runs([STATIC])[0]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_dataset) -> Path:
    """Trained on the committed math-tiny static folder (K = 12) and the tiny synthetic set (K = 4)."""
    out = tmp_path_factory.mktemp("domain-agent")
    train([STATIC, tiny_dataset], "bc", out, TrainConfig(**FAST, bc_max_roughness=1.0), progress=False)
    return out


def test_tokens_permute_with_the_domains(static_runs):
    h = history_prefix(static_runs[0].trajectory.history, 5)
    perm = np.random.default_rng(0).permutation(h.space.size)
    tok, run = encode_tokens(h, 16, Objective(spread_penalty=0.5))
    tok_p, run_p = encode_tokens(permuted(h, perm), 16, Objective(spread_penalty=0.5))
    assert tok.shape == (12, len(DOMAIN_FEATURES)) and run.shape == (len(RUN_FEATURES),)
    np.testing.assert_allclose(tok_p, tok[perm], atol=1e-6)
    np.testing.assert_allclose(run_p, run, atol=1e-6)
    # the tokens say what happened: the loss change is each domain's own relative change
    names = h.space.names
    first = np.array([h.feedback[0].domain_losses[n] for n in names])
    now = np.array([h.feedback[-1].domain_losses[n] for n in names])
    i = DOMAIN_FEATURES.index("loss_change")
    from mixagent.trajectories.encoding import GAIN_SCALE
    np.testing.assert_allclose(tok[:, i], (now - first) / first * GAIN_SCALE, rtol=1e-5)
    assert run[RUN_FEATURES.index("progress")] == pytest.approx(5 / 16)


def test_network_is_permutation_equivariant_and_ignores_padding():
    torch.manual_seed(0)
    net = DomainSetNet(len(DOMAIN_FEATURES), len(RUN_FEATURES), width=32).eval()
    tok, run = torch.randn(2, 7, len(DOMAIN_FEATURES)), torch.randn(2, len(RUN_FEATURES))
    mask = torch.ones(2, 7)
    perm = torch.randperm(7)
    with torch.no_grad():
        z = net(tok, run, mask)
        np.testing.assert_allclose(net(tok[:, perm], run, mask).numpy(), z[:, perm].numpy(), atol=1e-5)
        padded = torch.cat([tok, torch.randn(2, 3, len(DOMAIN_FEATURES))], dim=1)
        zp = net(padded, run, torch.cat([mask, torch.zeros(2, 3)], dim=1))
    np.testing.assert_allclose(zp[:, :7].numpy(), z.numpy(), atol=1e-5)
    assert (zp[:, 7:] < -1e8).all()


def test_examples_imitate_the_best_smooth_runs(static_runs):
    rng = np.random.default_rng(0)
    ex = set_examples(static_runs, draws=3, top_fraction=0.05, objective_range=ObjectiveRange(), rng=rng)
    n = max(1, round(0.05 * len(static_runs)))
    assert len(ex) == 3 * n * 16  # every decision of the top runs, per draw
    assert all(t.shape == (12,) and abs(t.sum() - 1) < 1e-5 for t in ex.targets)
    assert all(mixture_roughness(r) == 0.0 for r in static_runs)  # constant mixtures
    with pytest.raises(DatasetError, match="bc_max_roughness"):
        set_examples([r for r in static_runs if False] or static_runs, 1, 0.1, ObjectiveRange(), rng,
                     max_roughness=-1.0)


def test_artifact_serves_any_space_and_permutes_with_it(artifact, static_runs):
    card, factory = load_artifact(artifact)
    assert card.domain_set and card.algorithm == "bc/domain-set" and card.max_domains == 256
    meta = json.loads((artifact / "training.json").read_text())
    assert meta["validation_trajectories"] > 0 and meta["metrics"]["export/max_abs_diff_onnx_vs_torch"] < 1e-5
    h = synthetic_history(static_runs[0].trajectory.header.space, 8)  # near-prior mixtures, small drifts
    policy = factory(h.space, 16, Objective())
    assert isinstance(policy, OnnxSetPolicy)
    d = decide(policy, h.space, h)
    assert d.fallback is None, d.reason
    perm = np.random.default_rng(1).permutation(12)
    hp = permuted(h, perm)
    dp = decide(factory(hp.space, 16, Objective()), hp.space, hp)
    assert dp.fallback is None
    np.testing.assert_allclose(dp.weights.values, np.asarray(d.weights.values)[perm], atol=1e-6)

    # a space larger than any the agent was trained on (40 domains): the agent itself serves it
    big = DomainSpace(domains=tuple(Domain(name=f"d{k:02d}", field="source" if k < 30 else "target")
                                    for k in range(40)))
    hb = synthetic_history(big, 3)
    db = decide(factory(big, 16, Objective()), big, hb)
    assert db.fallback is None, db.reason
    assert len(db.weights.values) == 40 and sum(db.weights.values) == pytest.approx(1.0, abs=1e-9)
    first = decide(factory(big, 16, Objective()), big, History(space=big))
    assert first.fallback is None and len(first.weights.values) == 40


def test_guard_hands_unreadable_spaces_and_observations_to_the_fallback(artifact):
    _, factory = load_artifact(artifact)
    no_source = DomainSpace.from_fields({"code": ["a", "b"], "math": ["c"]})
    d = decide(factory(no_source, 16, Objective()), no_source, synthetic_history(no_source, 1))
    assert d.fallback == "uniform" and "needs a 'source' field" in (d.reason or "")
    huge = DomainSpace(domains=tuple(Domain(name=f"d{k}", field="source" if k % 2 else "target") for k in range(300)))
    d = decide(factory(huge, 16, Objective()), huge, History(space=huge))
    assert d.fallback == "uniform" and "up to 256 domains" in (d.reason or "")
    # one domain whose loss rose by half: a token outside anything seen in training, named with its
    # domain by a card without a clamp band (every card written before it existed) ...
    space = DomainSpace.from_fields({"source": ["s1", "s2", "s3"], "target": ["t1"]})

    def raised(factor: float) -> History:
        h = synthetic_history(space, 2)
        fb = h.feedback[-1]
        h.feedback[-1] = fb.model_copy(update={"domain_losses": {**fb.domain_losses,
                                                                 "s2": fb.domain_losses["s2"] * factor}})
        return h

    strict_card = tmp_path_with_card(artifact, clamp_band=None)
    strict = load_artifact(strict_card)[1](space, 16, Objective())
    card, factory = load_artifact(artifact)
    assert card.clamp_band == CLAMP_BAND and card.token_low is not None and card.token_high is not None
    policy = factory(space, 16, Objective())
    assert isinstance(policy, OnnxSetPolicy)
    narrow = TrainingRange(card.token_low, card.token_high)  # the ranges a card without a band uses
    banded = TrainingRange(card.token_low, card.token_high, clamp_band=CLAMP_BAND)
    clamped_and_served = 0
    for factor in (1.2, 1.5, 2.0, 3.0, 5.0):  # what is mild or gross depends on the trained ranges
        h = raised(factor)
        tokens, run = encode_tokens(h, 16, Objective(), card.encoder_version)
        d_strict, d = decide(strict, space, h), decide(policy, space, h)
        if narrow.problem(tokens, "token", space.names) is None:
            continue
        # a card without a band falls back, naming the feature and the domain ...
        assert d_strict.fallback == "uniform" and "of domain 's2'" in (d_strict.reason or "")
        if banded.problem(tokens, "token", space.names) is not None:  # ... and so does one past its band
            assert d.fallback == "uniform" and "of domain 's2'" in (d.reason or "")
            continue
        # ... while within the band the network serves the run on the clamped tokens
        assert d.fallback is None and d.reason is None
        np.testing.assert_allclose(d.weights.as_array(),
                                   policy.weights(banded.clamped(tokens), run, space.priors()), atol=1e-6)
        clamped_and_served += 1
    assert clamped_and_served >= 1


def tmp_path_with_card(artifact: Path, **change: object) -> Path:
    """A copy of ``artifact`` (beside it) whose card has ``change`` applied."""
    out = artifact.parent / f"{artifact.name}-{'-'.join(f'{k}{v}' for k, v in change.items())}"
    out.mkdir(exist_ok=True)
    (out / "policy.onnx").write_bytes((artifact / "policy.onnx").read_bytes())
    (out / "card.json").write_text(json.dumps({**json.loads((artifact / "card.json").read_text()), **change}))
    return out


def test_the_clamp_band_serves_mild_excursions_and_refuses_gross_ones():
    # range [0, 1]: OBS_MARGIN widens it to [-0.1, 1.1]; a band of 1 range width reaches [-1.1, 2.1]
    strict, banded = TrainingRange([0.0], [1.0]), TrainingRange([0.0], [1.0], clamp_band=1.0)
    assert strict.problem(np.array([1.05])) is None and strict.problem(np.array([1.15])) is not None
    for x, want in ((0.5, 0.5), (1.05, 1.05), (1.5, 1.1), (2.05, 1.1), (-1.05, -0.1)):
        assert banded.problem(np.array([x])) is None
        assert banded.clamped(np.array([x]))[0] == pytest.approx(want)
    assert "= 2.2 is outside the range seen in training [0, 1]" in (banded.problem(np.array([2.2])) or "")
    assert banded.problem(np.array([-1.2])) is not None
    # a feature constant in training gets no band: anything past the point's 0.05 pad is a problem
    point = TrainingRange([0.5], [0.5], clamp_band=1.0)
    assert point.problem(np.array([0.54])) is None and point.problem(np.array([0.6])) is not None


def test_bad_cards_and_options_are_refused(artifact, tmp_path):
    raw = json.loads((artifact / "card.json").read_text())
    for change, message in (({"max_domains": None}, "max_domains"),
                            ({"action": {**raw["action"], "level": "field"}}, "acts at domain level"),
                            ({"token_high": raw["token_high"][:3]}, "token_high")):
        bad = tmp_path / f"bad-{len(list(tmp_path.iterdir()))}"
        bad.mkdir()
        (bad / "policy.onnx").write_bytes((artifact / "policy.onnx").read_bytes())
        (bad / "card.json").write_text(json.dumps({**raw, **change}))
        with pytest.raises(ArtifactError, match=message):
            load_artifact(bad)
    # a domain-set card over the bundled field-level network: the inputs do not match
    assert PolicyCard.model_validate(raw).domain_set
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    (mismatch / "policy.onnx").write_bytes((REPO / "agent" / "artifacts" / "agent" / "policy.onnx").read_bytes())
    (mismatch / "card.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="expected inputs tokens"):
        load_artifact(mismatch)
    with pytest.raises(DatasetError, match="behaviour cloning"):
        train([STATIC], "bc+cql", tmp_path / "x", TrainConfig(**FAST))
    with pytest.raises(DatasetError, match="level: Input should be"):
        load_config(None, level="tokens")


def test_the_service_serves_a_forty_domain_run_with_the_domain_agent(artifact, tmp_path):
    """Over HTTP: a space with more domains than any training setting is served by the agent itself
    at every decision, and the answers are the artifact's own (decided locally on the same history)."""
    import shutil

    from starlette.testclient import TestClient

    from mixagent.service.server.main import create_app
    from tests.service.conftest import ADMIN, auth, make_settings

    settings = make_settings(tmp_path)
    shutil.copytree(artifact, settings.policy_dir / "domain")
    space = DomainSpace(domains=tuple(Domain(name=f"d{k:02d}", field="source" if k < 30 else "target",
                                             prior=1.0 + k % 3) for k in range(40)))
    local = synthetic_history(space, 3, seed=4)
    _, factory = load_artifact(artifact)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/policies/load", json={"path": "domain"}, headers=auth(ADMIN)).status_code == 201
        body = {"domains": [d.model_dump() for d in space.domains], "horizon": 16, "interval": 10,
                "policy": "agent-domain"}
        run = client.post("/v1/runs", json=body, headers=auth()).json()
        assert run["served_by"] == {"policy": "agent-domain@test", "fallback": None, "reason": None}
        history = History(space=space)
        for t, fb in enumerate(local.feedback):
            d = client.post(f"/v1/runs/{run['run_id']}/feedback", json=fb.model_dump(), headers=auth()).json()
            history.record_feedback(fb)
            want = decide(factory(space, 16, Objective()), space, history)
            assert d["served_by"]["fallback"] is None, (t, d["served_by"])
            assert list(d["weights"].values()) == pytest.approx(want.weights.values, abs=1e-6)
            assert sum(d["weights"].values()) == pytest.approx(1.0, abs=1e-9)
            history.record_weights(want.weights)
        # a space the card cannot serve (no source field) goes to the fallback, and /metrics counts it
        odd = {**body, "domains": [{"name": "a", "field": "code"}, {"name": "b", "field": "math"}]}
        run = client.post("/v1/runs", json=odd, headers=auth()).json()
        assert run["served_by"]["fallback"] == "uniform" and "needs a 'source' field" in run["served_by"]["reason"]
        metric = 'mixagent_fallback_decisions_total{policy="agent-domain@test",reason="space"} 1.0'
        assert metric in client.get("/metrics").text
        too_big = {**body, "domains": [{"name": f"d{k}", "field": "source" if k else "target"} for k in range(257)]}
        r = client.post("/v1/runs", json=too_big, headers=auth())
        assert r.status_code == 422 and "256" in r.json()["detail"]


def test_the_cli_trains_the_domain_agent_and_refuses_bad_options_in_one_line(tmp_path):
    from tests.conftest import run_mixagent

    cfg = tmp_path / "fast.yaml"
    cfg.write_text("bc_steps: 20\nbc_objective_draws: 2\nbatch_size: 32\ntransformer_d_model: 16\n")
    out = run_mixagent("agent", "train", "--level", "domain", "--algo", "bc", "--data", str(STATIC), "--out",
                       str(tmp_path / "p"), "--config", str(cfg), "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(bc/domain-set) trained on" in out.stdout and (tmp_path / "p" / "policy.onnx").is_file()
    assert "d3rlpy" not in out.stderr and "Gym" not in out.stderr  # plain torch: d3rlpy is never imported
    bad = run_mixagent("agent", "train", "--level", "tokens", "--algo", "bc", "--data", str(STATIC), "--out",
                       str(tmp_path / "q"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "level" in bad.stderr
    cql = run_mixagent("agent", "train", "--level", "domain", "--algo", "cql", "--data", str(STATIC), "--out",
                       str(tmp_path / "r"))
    assert cql.returncode == 2 and "behaviour cloning ('bc') only" in cql.stderr


def test_inside_is_the_common_case_of_problem_and_clamped():
    """``inside`` (one test for the common case) agrees with ``problem`` and ``clamped``."""
    r = TrainingRange([0.0, -1.0], [1.0, 1.0], clamp_band=1.0)
    rng = np.random.default_rng(0)
    for x in rng.uniform(-3.0, 3.0, size=(500, 2)):
        if r.inside(x):
            assert r.problem(x) is None and r.clamped(x) is x
        else:
            assert r.problem(x) is not None or not np.array_equal(r.clamped(x), x)


def test_history_noise_perturbs_only_the_own_mixture_columns(static_runs):
    from mixagent.agent.set_policy import HISTORY_FEATURES, MixtureNet, _cross_entropy

    assert [DOMAIN_FEATURES[i] for i in HISTORY_FEATURES] == [f for f in DOMAIN_FEATURES
                                                              if f.startswith("share_") or f == "field_share"]
    ex = set_examples(static_runs[:8], draws=1, top_fraction=1.0, objective_range=ObjectiveRange(),
                      rng=np.random.default_rng(0))
    seen: list[torch.Tensor] = []

    class Spy(MixtureNet):
        def forward(self, tokens, run, mask, prior):
            seen.append(tokens.clone())
            return super().forward(tokens, run, mask, prior)

    model = Spy(DomainSetNet(len(DOMAIN_FEATURES), len(RUN_FEATURES), 16, 1), 0.01)
    idx = list(range(16))
    with torch.no_grad():
        clean = _cross_entropy(model, ex, idx)
        noisy = _cross_entropy(model, ex, idx, 0.5, torch.Generator().manual_seed(0))
        again = _cross_entropy(model, ex, idx, 0.5, torch.Generator().manual_seed(0))
    diff = (seen[1] - seen[0]).abs()
    cols = list(HISTORY_FEATURES)
    others = [i for i in range(len(DOMAIN_FEATURES)) if i not in cols]
    assert float(diff[:, :, others].max()) == 0.0  # losses, gains, objective: untouched
    assert 0.3 < float(diff[:, :, cols].std()) < 0.7  # the noise's scale, on the own-mixture columns only
    assert torch.equal(seen[1], seen[2]) and noisy.item() == again.item() != clean.item()  # seeded


def test_history_noise_is_refused_at_field_level_naming_it():
    with pytest.raises(DatasetError, match=r"bc_history_noise: 0.5 .* level: domain \(got level: field\)"):
        load_config(None, bc_history_noise=0.5)
    assert load_config(None, bc_history_noise=0.5, level="domain").bc_history_noise == 0.5


def test_no_agent_trains_on_an_evaluation_only_suite_setting(tmp_path):
    folder = REPO / "data" / "trajectories" / "proofs-tiny-regmix"  # RegMix's priced proxy runs on proofs-tiny
    for level in ("domain", "field"):
        with pytest.raises(DatasetError, match=r"proofs-tiny-regmix holds runs of proofs-tiny, an evaluation-only"):
            train([STATIC, folder], "bc", tmp_path / level, TrainConfig(**{**FAST, "level": level}), progress=False)
    assert not (tmp_path / "domain").exists() and not (tmp_path / "field").exists()
