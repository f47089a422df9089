"""Which runs may join a folder: one corpus, one base per (corpus, numerics), starts within tolerance."""

import math

import pytest

from mixagent.trajectories import History
from mixagent.trajectories.environment import START_TOLERANCE, FolderEnvironment, ForeignEnvironmentError, start_drift
from mixagent.trajectories.storage import FileStore

PROV = {"corpus": "c" * 16, "base": "b" * 16, "numerics": "x86_64 A (AVX512); torch 2.13.0+cpu"}


def moved(traj, shift):
    """``traj`` with its first evaluation moved by ``shift`` nats in every domain."""
    h = traj.history
    f0 = h.feedback[0]
    f0 = f0.model_copy(update={"domain_losses": {d: v + shift for d, v in f0.domain_losses.items()}})
    history = History(space=h.space, feedback=[f0, *h.feedback[1:]], weights=h.weights)
    return traj.model_copy(update={"history": history})


@pytest.fixture()
def runs(tiny_dataset):
    return [s.trajectory for s in FileStore(tiny_dataset).load_all()]


def test_start_drift_is_the_largest_domain_difference_and_nan_is_infinitely_far(runs):
    a = runs[0].history.feedback[0].domain_losses
    assert start_drift(a, a) == 0.0
    assert start_drift(moved(runs[0], 0.003).history.feedback[0].domain_losses, a) == pytest.approx(0.003)
    assert math.isinf(start_drift(moved(runs[0], float("nan")).history.feedback[0].domain_losses, a))


def test_other_numerics_within_tolerance_join_and_further_starts_are_refused(tmp_path, runs):
    env = FolderEnvironment(tmp_path)
    env.admit(runs[0], PROV)
    env.admit(moved(runs[1], 0.9 * START_TOLERANCE), {**PROV, "numerics": "x86_64 B (AVX2)", "base": "e" * 16})
    with pytest.raises(ForeignEnvironmentError, match=rf"{runs[2].header.trajectory_id} starts from another "
                                                      r"evaluation .* differ by up to 0.011"):
        env.admit(moved(runs[2], 1.1 * START_TOLERANCE), PROV)
    with pytest.raises(ForeignEnvironmentError, match=r"differ by up to inf"):
        env.admit(moved(runs[2], float("nan")), PROV)


def test_another_corpus_is_refused_even_from_the_same_start(tmp_path, runs):
    env = FolderEnvironment(tmp_path)
    env.admit(runs[0], PROV)
    with pytest.raises(ForeignEnvironmentError, match=r"another corpus \(digest d{16}\) .* \(c{16}\)"):
        env.admit(runs[1], {**PROV, "corpus": "d" * 16})


def test_another_base_on_the_same_corpus_and_numerics_is_refused(tmp_path, runs):
    env = FolderEnvironment(tmp_path)
    env.admit(runs[0], PROV)
    with pytest.raises(ForeignEnvironmentError,
                       match=r"another base model \(weights digest e{16}, the folder's is b{16}\)"):
        env.admit(runs[1], {**PROV, "base": "e" * 16})
    env.admit(runs[1], {**PROV, "base": "e" * 16, "numerics": "other"})  # other numerics: another base is expected


def test_a_folder_of_records_without_provenance_adopts_a_corpus_only_when_told(tmp_path, runs):
    env = FolderEnvironment(tmp_path)
    env.admit(runs[0], {})
    env.admit(runs[1], {})
    with pytest.raises(ForeignEnvironmentError, match=r"the folder's 2 records predate provenance"):
        env.admit(runs[2], PROV)
    env.adopt_corpus = True
    env.admit(runs[2], PROV)
    env.adopt_corpus = False
    env.admit(runs[3], PROV)  # adopted once: later runs are compared with it
    with pytest.raises(ForeignEnvironmentError, match=r"another corpus"):
        env.admit(runs[4], {**PROV, "corpus": "d" * 16})


def test_a_stored_folder_is_rebuilt_oldest_first_keeping_its_adopted_corpus(tiny_dataset):
    stored = FileStore(tiny_dataset).load_all()
    env = FolderEnvironment.of(tiny_dataset, stored)
    oldest = min(stored, key=lambda s: s.meta.finished_at)
    assert env.start == oldest.trajectory.history.feedback[0]
    assert env.corpus == oldest.meta.provenance["corpus"] and env.unrecorded == 0 and not env.adopt_corpus
