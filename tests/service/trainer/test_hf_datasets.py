"""The live-weighted ``datasets`` mixture: real ``datasets`` objects built from local text (no hub),
draws that follow the weights and their changes (in DataLoader workers too), exact resume."""

from __future__ import annotations

import pytest

datasets = pytest.importorskip("datasets")
torch = pytest.importorskip("torch")

from mixagent.service.trainer.hf_datasets import LiveMixtureDataset  # noqa: E402
from tests.service.trainer.loader_checks import (  # noqa: E402
    check_draws_follow_the_weights,
    check_workers_follow_the_weights,
    drawn_with_a_resume,
)


def _sources():
    web = datasets.Dataset.from_dict({"text": [f"web document {i}" for i in range(50)],
                                      "id": [f"web-{i}" for i in range(50)]})
    code = datasets.Dataset.from_dict({"text": [f"def f{i}(): pass" for i in range(40)],
                                       "id": [f"code-{i}" for i in range(40)]})
    proofs = datasets.Dataset.from_dict({"text": [f"Lemma l{i}." for i in range(30)],
                                         "id": [f"proof-{i}" for i in range(30)]}).to_iterable_dataset()
    return {"web": web, "code": code, "proofs": proofs}


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_draws_follow_the_weights_and_their_changes():
    check_draws_follow_the_weights(lambda w: LiveMixtureDataset(_sources(), w, seed=0))
    # a map-style source is walked through a permutation: no repeat within a pass
    only_web = LiveMixtureDataset(_sources(), [1, 0, 0], seed=3)
    ids = [x["id"] for x in _take(iter(only_web), 50)]
    assert sorted(ids) == sorted(f"web-{i}" for i in range(50))
    # an iterable source restarts when it ends
    only_proofs = LiveMixtureDataset(_sources(), [0, 0, 1], seed=3)
    ids = [x["id"] for x in _take(iter(only_proofs), 60)]
    assert ids[:30] == ids[30:] == [f"proof-{i}" for i in range(30)]


def test_weights_set_in_the_main_process_reach_dataloader_workers():
    check_workers_follow_the_weights(lambda w: LiveMixtureDataset(_sources(), w, seed=1))
    # the two workers drew disjoint examples of each map-style source
    mix2 = LiveMixtureDataset(_sources(), [1, 0, 0], seed=1, num_samples=50)
    ids = [x["id"] for b in torch.utils.data.DataLoader(mix2, batch_size=5, num_workers=2,
                                                         collate_fn=lambda b: b) for x in b]
    assert len(ids) == 100 and len(set(ids)) == 50  # each worker its own half, num_samples per worker


def test_exact_resume_after_weight_changes():
    def run(resume_at: int | None) -> list[str]:
        return drawn_with_a_resume(lambda: LiveMixtureDataset(_sources(), seed=7), resume_at, total=300, every=60,
                                   key=lambda x: x["id"])

    straight = run(None)
    assert run(130) == straight and run(61) == straight  # mid-interval, after two and one weight changes


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"weights: missing domains \['proofs'\], unknown domains \['poems'\]"):
        LiveMixtureDataset(_sources(), {"web": 1, "code": 1, "poems": 1})
    with pytest.raises(ValueError, match="domain 'code' is empty"):
        LiveMixtureDataset({"web": _sources()["web"], "code": datasets.Dataset.from_dict({"text": []})})
    mix = LiveMixtureDataset(_sources())
    with pytest.raises(ValueError, match="positive sum"):
        mix.set_weights([0, 0, 0])
    with pytest.raises(ValueError, match="behind: 5 draws back, but 0 are recorded"):
        mix.state_dict(behind=5)
    other = LiveMixtureDataset({"web": _sources()["web"]}, seed=0)
    with pytest.raises(ValueError, match=r"saved for domains \['web', 'code', 'proofs'\]"):
        other.load_state_dict(mix.state_dict())


def test_num_samples_counts_per_iteration_and_a_resume_finishes_its_iteration():
    mix = LiveMixtureDataset(_sources(), seed=2, num_samples=10)
    first, second = [x["id"] for x in mix], [x["id"] for x in mix]
    assert len(first) == len(second) == 10 and first != second  # a second epoch, not an empty one
    fresh = LiveMixtureDataset(_sources(), seed=2, num_samples=10)
    it = iter(fresh)
    head = [next(it)["id"] for _ in range(4)]
    state = fresh.state_dict()
    resumed = LiveMixtureDataset(_sources(), seed=2, num_samples=10)
    resumed.load_state_dict(state)
    assert head + [x["id"] for x in resumed] == first  # the rest of the interrupted iteration
    assert [x["id"] for x in resumed] == second
