"""LiveWeightSampler: weights changed in the main process reach a multi-worker DataLoader."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from mixagent.service.trainer.sampler import LiveWeightSampler  # noqa: E402
from tests.service.trainer.loader_checks import drawn_with_a_resume  # noqa: E402


class DomainOf(Dataset):
    """Item i is the domain id of example i (domain 0: items 0..99, domain 1: 100..149)."""

    def __len__(self) -> int:
        return 150

    def __getitem__(self, i: int) -> int:
        return 0 if i < 100 else 1


def test_draws_follow_the_weights():
    s = LiveWeightSampler([range(100), range(100, 150)], ["a", "b"], {"a": 0.8, "b": 0.2}, num_samples=20000)
    share_b = np.mean([i >= 100 for i in s])
    assert share_b == pytest.approx(0.2, abs=0.015)
    assert list(s) == list(s)  # same epoch, same draws
    s.set_epoch(1)
    assert len(s) == 20000


@pytest.mark.parametrize(("workers", "accelerate", "delay"), [
    (0, False, 0),   # no workers: the next batch is drawn after the change
    (2, False, 4),   # prefetch_factor 2 x 2 workers batches of indices already in flight
    (0, True, 1),    # accelerate's DataLoaderShard reads one batch ahead (the Hugging Face Trainer's case)
    (2, True, 5),    # both
])
def test_weights_set_in_the_main_process_reach_the_workers_after_the_documented_delay(workers, accelerate, delay):
    """The sampler's docstring: after set_weights, prefetch_factor x num_workers batches (plus one under
    accelerate) still follow the old mixture, then every batch follows the new one. Real worker
    processes, a real accelerate Accelerator; chunk = batch size, so no batch mixes two mixtures."""
    sampler = LiveWeightSampler([range(100), range(100, 150)], ["a", "b"], [1.0, 0.0], num_samples=4000, chunk=8)
    loader = DataLoader(DomainOf(), batch_size=8, sampler=sampler, num_workers=workers,
                        **({"prefetch_factor": 2} if workers else {}))
    if accelerate:
        from accelerate import Accelerator

        loader = Accelerator(cpu=True).prepare(loader)
    batches = []
    for i, batch in enumerate(loader):
        batches.append(batch.tolist())
        if i == 20:
            sampler.set_weights({"a": 0.0, "b": 1.0})
        if i == 40:
            break
    assert all(x == 0 for b in batches[:21] for x in b)
    after = batches[21:]
    assert all(b == [0] * 8 for b in after[:delay]), after[: delay + 1]
    assert all(b == [1] * 8 for b in after[delay:]), after[: delay + 1]


def test_bad_weights_are_refused():
    s = LiveWeightSampler([[0], [1]], ["a", "b"], num_samples=4)
    assert s.weights == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="missing domains"):
        s.set_weights({"a": 1.0})
    with pytest.raises(ValueError, match="finite non-negative"):
        s.set_weights([float("nan"), 1.0])
    with pytest.raises(ValueError, match=r"domain\(s\) \['b'\] have no examples"):
        LiveWeightSampler([[0], []], ["a", "b"], num_samples=4)


def _sampler(**kw):  # type: ignore[no-untyped-def]
    return LiveWeightSampler([range(100), range(100, 150), range(150, 160)], ["a", "b", "c"],
                             **{"num_samples": 1000, "seed": 4, "chunk": 7, **kw})


def test_exact_resume_mid_chunk_after_weight_changes():
    """A sampler restored from a (JSON round-tripped) state yields exactly the indices of the
    uninterrupted one: mid-chunk, at a chunk boundary, before the first draw, after several changes."""
    def run(resume_at: int | None) -> list[int]:
        return drawn_with_a_resume(_sampler, resume_at, total=300, every=50)

    straight = run(None)
    assert len(set(straight)) > 100  # real draws, not one index
    for at in (0, 1, 51, 123, 140, 249):  # 51: inside a chunk drawn before the change at 50; 140: a boundary
        assert run(at) == straight, at
    fresh = _sampler()  # a state taken before any iteration starts the epoch afresh
    state = fresh.state_dict()
    resumed = _sampler()
    resumed.load_state_dict(state)
    assert list(resumed) == list(_sampler())


def test_a_resume_with_worker_processes_replays_the_indices_drawn_ahead():
    """With 2 workers the DataLoader has drawn 4 batches of indices ahead of the batches consumed:
    ``state_dict(behind=...)`` saves the state before them and their weights, so a resumed loader
    (same workers) gives exactly the uninterrupted run's batches, across two later weight changes."""
    def run(resume_after: int | None, total: int = 24) -> list[list[int]]:
        s = _sampler(chunk=8, num_samples=2000)
        loader = DataLoader(range(160), batch_size=8, sampler=s, num_workers=2, prefetch_factor=2)
        batches: list[list[int]] = []
        it = iter(loader)
        while len(batches) < total:
            if len(batches) in (6, 9, 12, 18):  # 9: a change while batches 11-13 are drawn ahead
                s.set_weights(np.random.default_rng(len(batches)).dirichlet([1, 1, 1]))
            if resume_after is not None and len(batches) == resume_after:
                state = s.state_dict(behind=2 * 2 * 8)  # prefetch_factor x workers batches of 8
                del it
                s = _sampler(chunk=8, num_samples=2000)
                s.load_state_dict(state)
                loader = DataLoader(range(160), batch_size=8, sampler=s, num_workers=2, prefetch_factor=2)
                it = iter(loader)
            batches.append(next(it).tolist())
        return batches

    straight = run(None)
    assert run(10) == straight


def test_bad_states_are_refused_naming_what_differs():
    s = _sampler()
    next(iter(s))
    with pytest.raises(ValueError, match="behind: 5 indices back, but 1 are recorded"):
        s.state_dict(behind=5)
    with pytest.raises(ValueError, match="state: saved with seed 4, this LiveWeightSampler has seed 5"):
        _sampler(seed=5).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match=r"state: saved for domains \['a', 'b', 'c'\]"):
        LiveWeightSampler([[0], [1]], ["a", "b"], num_samples=4, seed=4).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="state: version 0, this release reads 2"):
        s.load_state_dict({**s.state_dict(), "version": 0})
    s.set_weights([1, 1, 1], run_id="run-1")
    with pytest.raises(ValueError, match="weights: of run run-2, but this loader samples for run run-1"):
        s.set_weights([1, 2, 1], run_id="run-2")
