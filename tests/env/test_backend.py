import itertools
import math

import numpy as np
import pytest

from mixagent.env.backend import EvalSet, TokenSampler, get_lr


def test_get_lr_warms_up_then_decays_to_the_floor():
    kw = dict(lr=1e-3, warmup=10, total=110, min_ratio=0.1)
    lrs = [get_lr(s, **kw) for s in range(120)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:110]))  # monotone decay
    assert lrs[60] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert lrs[110] == lrs[119] == pytest.approx(1e-4)


def test_sampler_draws_domains_by_weight_and_is_seeded():
    arrays = [np.full(500, k, dtype=np.uint16) for k in range(3)]
    s = TokenSampler(arrays, seq_len=8)
    probs = np.array([0.7, 0.2, 0.1])
    batch = s.sample(probs, 4000, np.random.default_rng(0))
    assert batch.shape == (4000, 9)
    assert (batch == batch[:, :1]).all()  # each window comes from one domain
    share = np.bincount(batch[:, 0].numpy(), minlength=3) / 4000
    np.testing.assert_allclose(share, probs, atol=0.03)
    again = s.sample(probs, 4000, np.random.default_rng(0))
    assert (again == batch).all()
    with pytest.raises(ValueError, match=r"domains \['tiny'\] have fewer than cpt.seq_len\+1=9 train tokens"):
        TokenSampler([np.zeros(5, dtype=np.uint16)], seq_len=8, names=["tiny"])
    # every window start is reachable, the last one included
    edge = TokenSampler([np.arange(10, dtype=np.uint16)], seq_len=8)
    firsts = set(edge.sample(np.array([1.0]), 200, np.random.default_rng(0))[:, 0].tolist())
    assert firsts == {0, 1}


def test_eval_windows_are_fixed_and_cover_each_domain():
    arrays = [np.arange(1000, dtype=np.uint16), np.arange(2000, dtype=np.uint16)]
    ev = EvalSet.build(arrays, ["a", "b"], n=4, seq_len=16)
    assert ev.windows.shape == (8, 17)
    assert ev.domain_of_row.tolist() == [0] * 4 + [1] * 4
    assert ev.windows[0, 0] == 0 and ev.windows[3, -1] == 999  # spread over the whole held-out set
    with pytest.raises(ValueError, match="domain b: 20 held-out tokens"):
        EvalSet.build([arrays[0], np.arange(20, dtype=np.uint16)], ["a", "b"], n=4, seq_len=16)


def test_training_on_a_domain_lowers_its_loss_and_reset_restores_the_base(tiny_backend):
    b = tiny_backend
    b.reset(1)
    before = b.evaluate()
    probs = np.array([0.0, 0.0, 1.0, 0.0])  # tgt_a only
    b.train(probs, 30)
    after = b.evaluate()
    assert after.step == 30 and after.tokens_seen == 30 * b.tokens_per_step
    assert after.domain_losses["tgt_a"] < before.domain_losses["tgt_a"] - 0.05
    change = {d: after.domain_losses[d] - before.domain_losses[d] for d in ("tgt_a", "tgt_b")}
    assert change["tgt_a"] < change["tgt_b"]
    b.reset(1)
    assert b.evaluate() == before  # base weights come back exactly, from memory


def test_field_score_is_continuation_log_likelihood(tiny_backend):
    b = tiny_backend
    b.reset(0)
    fb = b.evaluate()
    nll = b.token_nll().numpy()
    rows = b.eval_set.domain_of_row
    src = [-nll[rows == k, b.context_len:].mean() for k in (0, 1)]
    assert fb.field_scores["source"] == pytest.approx(np.mean(src), rel=1e-6)
    assert fb.domain_losses["src_a"] == pytest.approx(nll[rows == 0].mean(), rel=1e-6)
    assert all(v < 0 for v in fb.field_scores.values())
