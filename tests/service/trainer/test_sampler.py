"""LiveWeightSampler: weights changed in the main process reach a multi-worker DataLoader."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from mixagent.service.trainer.sampler import LiveWeightSampler  # noqa: E402


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
