"""The trainer-side hook (env/trainer_side.py): the model takes exactly the interval's steps and
tokens from its own batch stream whatever a method does beside it; the validation sample comes from
the training split, weighted by the objective; a method that takes too few or too many steps is refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from mixagent.env.mixing_env import DataMixingEnv
from mixagent.env.trainer_side import IntervalTrainer, TrainerSideMethod, validation_probs
from mixagent.trajectories import ContractError, DomainSpace, Objective

MIX = np.array([0.1, 0.2, 0.3, 0.4])


class FixedMix:
    """Trains the whole interval on one mixture; with ``busy`` it also does what an expensive method
    does beside the model (a twin trained on validation and domain batches, probe passes)."""

    name = "fixed-mix"

    def __init__(self, busy: bool = False, steps: int | None = None):
        self.busy = busy
        self.steps = steps
        self.resets = 0

    @property
    def params(self) -> dict[str, Any]:
        return {"busy": self.busy}

    def check_interval(self, interval: int, space: DomainSpace) -> None:
        pass

    def reset(self, space: DomainSpace) -> None:
        self.resets += 1

    def train_interval(self, trainer: IntervalTrainer) -> dict[str, Any]:
        n = trainer.steps if self.steps is None else self.steps
        if self.busy:
            twin = trainer.twin()
            for _ in range(3):
                twin.step(trainer.loss(twin.model, trainer.validation_batch()))
            probes = [trainer.domain_batch(k) for k in range(trainer.space.size)]
            trainer.domain_losses(twin.model, probes)
            trainer.domain_losses(trainer.model, probes)
        for _ in range(n):
            trainer.step(MIX)
        return {"t": trainer.t}


def _adam_steps(backend) -> set[int]:
    return {int(s["step"]) for s in backend.optimizer.state.values()}


def test_a_method_trains_exactly_the_interval_on_the_models_own_stream(tiny_setting, tiny_backend):
    assert isinstance(FixedMix(), TrainerSideMethod)
    env = DataMixingEnv(tiny_setting, backend=tiny_backend)
    env.reset(seed=3)
    plain = []
    for _ in range(tiny_setting.cpt.horizon):
        env.step_weights(MIX)
        plain.append(tiny_backend.step)
    plain_history = env.history
    interval, horizon = tiny_setting.cpt.interval, tiny_setting.cpt.horizon
    for busy in (False, True):
        method = FixedMix(busy=busy)
        env.reset(seed=3)
        infos = []
        for t in range(horizon):
            *_, truncated, info = env.step_method(method)
            infos.append(info)
            assert tiny_backend.step == plain[t] == interval * (t + 1)
            assert _adam_steps(tiny_backend) == {interval * (t + 1)}  # the optimizer stepped the model that often
        assert truncated and method.resets == 1
        h = env.history
        # the same batches, the same model: what a method does beside the model never reaches it
        assert h.feedback == plain_history.feedback
        np.testing.assert_allclose([w.values for w in h.weights], [w.values for w in plain_history.weights],
                                   rtol=0, atol=1e-12)
        assert [fb.tokens_seen for fb in h.feedback] == [t * interval * tiny_backend.tokens_per_step
                                                          for t in range(horizon + 1)]
        assert [i["method"] for i in infos] == [{"t": t} for t in range(horizon)]
        secs = env.last_method_seconds
        assert set(secs) == {"train_cpu_s", "train_wall_s", "overhead_cpu_s", "overhead_wall_s"}
        assert secs["train_cpu_s"] > 0 and secs["overhead_cpu_s"] >= 0
        if busy:  # a twin's steps and probes are overhead, measured apart from the model's steps
            assert secs["overhead_cpu_s"] > 0


def test_a_method_that_takes_too_few_or_too_many_steps_is_refused(tiny_setting, tiny_backend):
    env = DataMixingEnv(tiny_setting, backend=tiny_backend)
    interval = tiny_setting.cpt.interval
    env.reset(seed=0)
    with pytest.raises(ContractError, match=f"fixed-mix: took {interval - 1} optimizer steps of the model in an "
                                            f"interval of {interval}"):
        env.step_method(FixedMix(steps=interval - 1))
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match=f"the interval has {interval} optimizer steps of the model"):
        env.step_method(FixedMix(steps=interval + 1))
    with pytest.raises(RuntimeError, match="call reset"):  # a failed stage ends the episode, as for step_weights
        env.step_method(FixedMix())


def test_the_validation_sample_is_the_training_split_weighted_by_the_objective(tiny_setting, tiny_backend):
    space = tiny_setting.space  # source: src_a, src_b; target: tgt_a, tgt_b, equal priors
    assert validation_probs(space, Objective()) == pytest.approx([0.25] * 4)
    skewed = Objective(field_weights={"source": 1.0, "target": 4.0})
    assert validation_probs(space, skewed) == pytest.approx([0.1, 0.1, 0.4, 0.4])
    uneven = DomainSpace.from_fields({"source": ["a", "b"], "target": ["c"]}, {"a": 3.0})
    assert validation_probs(uneven, skewed) == pytest.approx([0.15, 0.05, 0.8])

    tiny_backend.reset(0)
    trainer = IntervalTrainer(tiny_backend, tiny_setting.cpt.interval, skewed, t=0, horizon=1)
    rows = trainer.validation_batch(400)
    assert rows.shape == (400, tiny_setting.cpt.seq_len + 1)
    # every row is a window of one domain's training tokens, and no row is an evaluation window
    from mixagent.env.data import prepare_data

    data = prepare_data(tiny_setting)
    width = tiny_setting.cpt.seq_len + 1
    windows = {name: {tuple(w) for w in sliding_window_view(data.train[name].astype(np.int64), width)}
               for name in space.names}
    owner = []
    for row in rows.tolist():
        found = [k for k, name in enumerate(space.names) if tuple(row) in windows[name]]
        assert found, "a validation row is not a window of the training split"
        owner.append(found[0])
    evaluation = {tuple(w) for w in tiny_backend.eval_set.windows.tolist()}
    assert not evaluation & {tuple(r) for r in rows.tolist()}
    share = np.bincount(owner, minlength=4) / len(owner)
    np.testing.assert_allclose(share, [0.1, 0.1, 0.4, 0.4], atol=0.07)
    # a domain batch holds windows of that domain only
    batch = trainer.domain_batch(2, 20)
    assert all(tuple(r) in windows["tgt_a"] for r in batch.tolist())
    # the method's own generator: drawing validation rows leaves the model's batch stream alone
    before = tiny_backend.rng.bit_generator.state
    trainer.validation_batch()
    assert tiny_backend.rng.bit_generator.state == before


def test_a_twin_is_a_copy_that_trains_apart_from_the_model(tiny_setting, tiny_backend):
    tiny_backend.reset(0)
    tiny_backend.train(MIX, 2)  # optimizer state to copy
    trainer = IntervalTrainer(tiny_backend, tiny_setting.cpt.interval, Objective(), t=0, horizon=1)
    model_state = {k: v.clone() for k, v in tiny_backend.model.state_dict().items()}
    moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in tiny_backend.optimizer.state.items()}
    twin = trainer.twin()
    batch = trainer.validation_batch()
    before = trainer.row_losses(twin.model, batch).mean()
    for _ in range(3):
        twin.step(trainer.loss(twin.model, batch))
    assert trainer.row_losses(twin.model, batch).mean() < before
    for k, v in tiny_backend.model.state_dict().items():
        assert torch.equal(v, model_state[k]), k
    for p, s in tiny_backend.optimizer.state.items():
        for k, v in s.items():
            assert torch.equal(v, moments[id(p)][k])
    assert tiny_backend.step == 2 and twin.steps == 3
