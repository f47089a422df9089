"""Per-run data pools: caps applied exactly and reproducibly, small pools repeat their text, the
covariates of a constructed pool, runs without a pool untouched, and the refusals."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest

from mixagent.env.pools import (
    COVARIATES,
    PoolError,
    PoolSpec,
    cap_arrays,
    domain_statistics,
    parse_pool,
    pool_covariates,
    pool_of,
)

NAMES = ["src_a", "src_b", "tgt_a", "tgt_b"]


def test_drawn_caps_come_from_the_runs_seed_and_stay_in_range():
    spec = PoolSpec(low=0.02, high=0.5)
    a = spec.caps_for(NAMES, 123)
    assert a == spec.caps_for(NAMES, 123) and a != spec.caps_for(NAMES, 124)
    assert list(a) == NAMES and all(0.02 <= c <= 0.5 for c in a.values())
    assert all(float(f"{c:.4g}") == c for c in a.values())  # exactly what the JSON record holds
    caps = np.array([list(spec.caps_for(NAMES, s).values()) for s in range(400)])
    # log-uniform: the median of log caps sits at the middle of [log 0.02, log 0.5]
    assert np.median(np.log(caps)) == pytest.approx((math.log(0.02) + math.log(0.5)) / 2, abs=0.15)
    fixed = PoolSpec(caps=(("tgt_a", 0.05),))
    assert fixed.caps_for(NAMES, 1) == fixed.caps_for(NAMES, 2) == {"src_a": 1.0, "src_b": 1.0, "tgt_a": 0.05,
                                                                    "tgt_b": 1.0}
    assert fixed.pinned() == {"caps": {"tgt_a": 0.05}} and spec.pinned() == {"low": 0.02, "high": 0.5}


def test_parse_pool_and_its_refusals():
    assert parse_pool("") is None
    assert parse_pool("draw") == PoolSpec()
    assert parse_pool("draw:0.05") == PoolSpec(low=0.05)
    assert parse_pool("draw:0.05:0.5") == PoolSpec(low=0.05, high=0.5)
    assert parse_pool("full").caps_for(NAMES, 0) == dict.fromkeys(NAMES, 1.0)
    assert parse_pool("tgt_a=0.1, tgt_b=0.2") == PoolSpec(caps=(("tgt_a", 0.1), ("tgt_b", 0.2)))
    for bad, msg in (("tgt_a", "expected NAME=CAP"), ("tgt_a=x", "expected NAME=CAP"),
                     ("tgt_a=0", r"pool.tgt_a: a cap must be a fraction in \(0, 1\], got 0.0"),
                     ("tgt_a=1.5", "pool.tgt_a"), ("draw:x", "with numbers"), ("draw:0.5:0.1", "low <= high"),
                     ("draw:0.1:0.2:0.3", "expected draw")):
        with pytest.raises(PoolError, match=msg):
            parse_pool(bad)
    with pytest.raises(PoolError, match=r"\['nope'\] are not domains of this setting"):
        parse_pool("nope=0.5").caps_for(NAMES, 0)


def test_caps_cut_an_exact_prefix_and_an_empty_domain_is_named():
    arrays = {"a": np.arange(1000), "b": np.arange(50)}
    out = cap_arrays(arrays, {"a": 0.0125, "b": 1.0}, min_tokens=10)
    assert out["a"].tolist() == list(range(12)) and out["b"].size == 50  # round(0.0125·1000) = 12
    assert np.shares_memory(out["a"], arrays["a"])  # a view: no copy of the corpus per run
    with pytest.raises(PoolError, match=r"pool.b: cap 0.1 leaves 5 of its 50 train tokens.*needs 10"):
        cap_arrays(arrays, {"b": 0.1}, min_tokens=10)
    with pytest.raises(PoolError, match=r"\['c'\] are not domains"):
        cap_arrays(arrays, {"c": 0.5}, min_tokens=10)
    assert pool_of({"seed": 3}, ["a", "b"]) == {"a": 1.0, "b": 1.0}
    assert pool_of({"pool": {"a": 0.5, "b": 1}}, ["a", "b"]) == {"a": 0.5, "b": 1.0}
    with pytest.raises(PoolError, match=r"schedule_params\.pool: expected one cap per domain"):
        pool_of({"pool": {"a": 0.5}}, ["a", "b"])


def test_covariates_of_a_constructed_pool():
    rng = np.random.default_rng(0)
    varied = rng.integers(0, 256, size=4000)  # uniform over 256 tokens: 8 bits, barely compressible
    periodic = np.tile(np.arange(4), 1000)  # 4 tokens in a cycle: 2 bits, very compressible
    log_n, ratio, bits = domain_statistics(periodic)
    assert log_n == pytest.approx(math.log10(4000)) and bits == pytest.approx(2.0)
    raw = periodic.astype(np.uint16).tobytes()
    assert ratio == pytest.approx(len(zlib.compress(raw, 1)) / len(raw)) and ratio < 0.05
    _, ratio_v, bits_v = domain_statistics(varied)
    assert bits_v == pytest.approx(8.0, abs=0.1) and ratio_v > 10 * ratio
    x = pool_covariates({"v": varied, "p": periodic}, {"v": 0.25}, {"v": 3.5, "p": 1.25}, min_tokens=10)
    assert x.shape == (2, len(COVARIATES))
    assert x[0, 0] == 3.5 and x[0, 1] == pytest.approx(3.0)  # 1000 tokens left of v
    assert x[1].tolist() == pytest.approx([1.25, log_n, ratio, bits])
    with pytest.raises(PoolError, match=r"heldout_loss: no base held-out loss for domains \['p'\]"):
        pool_covariates({"v": varied, "p": periodic}, {}, {"v": 3.5}, min_tokens=10)
    with pytest.raises(PoolError, match=r"pool\.p: cap 0\.001 leaves 4 of its 4000"):
        pool_covariates({"v": varied, "p": periodic}, {"p": 0.001}, {"v": 3.5, "p": 1.0}, min_tokens=10)


def rollout(env, seed, pool=None):
    env.reset(seed=seed, options=None if pool is None else {"pool": pool})
    fbs = [env.history.feedback[0]]
    for _ in range(env.horizon):
        env.step_weights(np.full(env.space.size, 1 / env.space.size))
        fbs.append(env.history.feedback[-1])
    return [f.model_dump() for f in fbs]


def test_the_env_trains_on_the_pool_and_without_one_is_untouched(tiny_env, tiny_setting):
    full_sampler = tiny_env.backend.sampler
    plain = rollout(tiny_env, 5)
    assert tiny_env.backend.sampler is full_sampler and tiny_env.pool is None
    # the full pool rebuilds the sampler from the same tokens: the very same run
    assert rollout(tiny_env, 5, dict.fromkeys(tiny_setting.space.names, 1.0)) == plain
    small = {"src_a": 1.0, "src_b": 1.0, "tgt_a": 0.02, "tgt_b": 0.5}
    capped = rollout(tiny_env, 5, small)
    assert capped[0] == plain[0] and capped[1:] != plain[1:]  # same base and held-out windows, other text
    assert tiny_env.pool == small
    sampler, seq = tiny_env.backend.sampler, tiny_setting.cpt.seq_len
    k = tiny_setting.space.names.index("tgt_a")
    n_full = full_sampler.spans[k] + seq
    assert sampler.spans[k] + seq == round(0.02 * n_full)  # exactly the cap
    prefix = full_sampler.tokens[full_sampler.offsets[k]: full_sampler.offsets[k] + sampler.spans[k] + seq]
    assert np.array_equal(sampler.tokens[sampler.offsets[k]: sampler.offsets[k] + sampler.spans[k] + seq], prefix)
    # a small pool repeats its text: 2000 windows of tgt_a have far fewer distinct starts than rows
    rows = sampler.sample(np.eye(4)[k], 2000, np.random.default_rng(0)).numpy()
    assert len({r.tobytes() for r in rows}) <= sampler.spans[k] < 2000
    assert rollout(tiny_env, 5) == plain and tiny_env.backend.sampler is full_sampler  # back to the full split
    with pytest.raises(PoolError, match=r"pool.tgt_a: cap 0.0001 leaves"):
        tiny_env.reset(seed=0, options={"pool": {"tgt_a": 1e-4}})


def test_generate_records_each_runs_pool(tiny_setting, cache_dir, tmp_path):
    from mixagent.agent.generate import GenerateConfig, generate, make_plan
    from mixagent.trajectories.storage import FileStore

    spec = PoolSpec(low=0.05, high=0.9)
    plain = make_plan(tiny_setting, n=2, families=("static_dirichlet",), level="domain")
    pooled = make_plan(tiny_setting, n=2, families=("static_dirichlet",), level="domain", pool=spec)
    assert [p.pool for p in plain] == [None, None]
    assert [p.params for p in pooled] == [p.params for p in plain]
    assert not {p.run_id for p in pooled} & {p.run_id for p in plain}  # a pool is part of the id
    out = tmp_path / "pools"
    cfg = GenerateConfig(out=out, n=2, families=("static_dirichlet",), level="domain", pool=spec, threads=1,
                         cache_dir=cache_dir, progress=False)
    report = generate(cfg, tiny_setting)
    assert report.generated == 2 and not report.failed
    assert json.loads((out / "generate.json").read_text())["pool"] == {"low": 0.05, "high": 0.9}
    for stored in FileStore(out).load_all():
        hd = stored.trajectory.header
        item = next(p for p in pooled if p.run_id == hd.trajectory_id)
        assert hd.schedule_params == {**item.params, "pool": spec.caps_for(tiny_setting.space.names, hd.seed)}
    from mixagent.agent.errors import RunnerError

    with pytest.raises(RunnerError, match="pool is"):  # the folder pins its pool law
        generate(GenerateConfig(out=out, n=2, families=("static_dirichlet",), level="domain",
                                pool=PoolSpec(low=0.1), threads=1, cache_dir=cache_dir, progress=False), tiny_setting)


def test_the_generate_command_takes_a_pool(tiny_setting_file, cache_dir, tmp_path):
    from tests.conftest import run_mixagent

    out = tmp_path / "cli-pools"
    env = {"MIXAGENT_HOME": str(cache_dir)}
    ok = run_mixagent("trajectories", "generate", "--setting", str(tiny_setting_file), "--n", "1", "--families",
                      "static_dirichlet", "--level", "domain", "--pool", "draw:0.05", "--out", str(out), "--threads",
                      "1", "--no-progress", env=env)
    assert ok.returncode == 0 and "1/1 planned trajectories finished" in ok.stdout, ok.stderr[-2000:]
    assert json.loads((out / "generate.json").read_text())["pool"] == {"low": 0.05, "high": 1.0}
    bad = run_mixagent("trajectories", "generate", "--setting", str(tiny_setting_file), "--n", "1", "--pool",
                       "tgt_a=2", "--out", str(tmp_path / "bad"), env=env)
    assert bad.returncode == 2 and "pool.tgt_a: a cap must be a fraction in (0, 1], got 2.0" in bad.stderr
