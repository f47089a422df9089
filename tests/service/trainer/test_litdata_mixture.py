"""The live-weighted litdata mixture: real ``StreamingDataset``s over local text written in litdata's
chunked format (no network), draws that follow the weights and their changes (in DataLoader
workers too), domains read pass after pass in litdata's own order, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
litdata = pytest.importorskip("litdata")

from litdata.streaming.writer import BinaryWriter  # noqa: E402

from mixagent.service.trainer.litdata_mixture import LiveLitdataMixture  # noqa: E402
from tests.service.trainer.loader_checks import (  # noqa: E402
    check_draws_follow_the_weights,
    check_workers_follow_the_weights,
    drawn_with_a_resume,
)

pytestmark = pytest.mark.filterwarnings("ignore:A newer version of litdata")  # litdata asks PyPI at start

SIZES = {"web": 50, "code": 40, "proofs": 30}
TEXT = {"web": "web document {i} about the weather", "code": "def f{i}(x): return x + {i}",
        "proofs": "Lemma l{i}: forall n, n + {i} = {i} + n."}


def write_domains(root: Path, sizes: dict[str, int] = SIZES, chunk_size: int = 8) -> dict[str, str]:
    """Each domain's text in litdata's format (the chunks + index.json ``litdata.optimize`` writes)."""
    out = {}
    for d, n in sizes.items():
        folder = root / d
        writer = BinaryWriter(str(folder), chunk_size=chunk_size)
        for i in range(n):
            writer[i] = {"id": f"{d}-{i}", "text": TEXT[d].format(i=i)}
        writer.done()
        writer.merge()
        out[d] = str(folder)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_domains(tmp_path_factory.mktemp("litdata"))


def _sources(folders: dict[str, str], shuffle: bool = True) -> dict[str, litdata.StreamingDataset]:
    return {d: litdata.StreamingDataset(f, shuffle=shuffle, seed=11) for d, f in folders.items()}


def _take(it, n):  # type: ignore[no-untyped-def]
    return [next(it) for _ in range(n)]


def test_draws_follow_the_weights_and_their_changes(folders):
    check_draws_follow_the_weights(lambda w: LiveLitdataMixture(_sources(folders), w, seed=0))
    # a domain is read pass after pass, each pass every example once, a shuffled dataset reshuffled
    only_code = LiveLitdataMixture(_sources(folders), [0, 1, 0], seed=3)
    ids = [x["id"] for x in _take(iter(only_code), 80)]
    assert sorted(ids[:40]) == sorted(ids[40:]) == sorted(f"code-{i}" for i in range(40))
    assert ids[:40] != ids[40:] and ids[:40] != [f"code-{i}" for i in range(40)]
    in_order = LiveLitdataMixture(_sources(folders, shuffle=False), [0, 1, 0], seed=3)
    assert [x["id"] for x in _take(iter(in_order), 40)] == [f"code-{i}" for i in range(40)]
    assert [x["text"] for x in _take(iter(in_order), 2)] == [TEXT["code"].format(i=0), TEXT["code"].format(i=1)]


def test_exact_resume_after_weight_changes(folders):
    """A mixture restored from a (JSON round-tripped) state yields exactly the uninterrupted one's
    examples: mid-pass, after a domain's first pass ended, after several weight changes."""
    def run(resume_at: int | None) -> list[str]:
        return drawn_with_a_resume(lambda: LiveLitdataMixture(_sources(folders), seed=7), resume_at, total=260,
                                   every=40, key=lambda x: x["id"])

    straight = run(None)
    counts = {d: sum(i.startswith(d) for i in straight) for d in SIZES}
    assert all(counts[d] > SIZES[d] for d in SIZES), counts  # every domain went into a second pass
    for at in (57, 170):
        resumed = run(at)
        assert resumed == straight, at
    mix = LiveLitdataMixture(_sources(folders), seed=7)
    _take(iter(mix), 170)
    cursors = mix.state_dict()["cursors"]
    assert any(c > SIZES[d] for c, d in zip(cursors, SIZES, strict=True))  # a resume past a pass boundary


def test_weights_set_in_the_main_process_reach_dataloader_workers_on_disjoint_shards(folders):
    check_workers_follow_the_weights(lambda w: LiveLitdataMixture(_sources(folders), w, seed=1))
    # litdata gives each worker its own chunks: one pass of both workers is the domain, once
    one = LiveLitdataMixture(_sources(folders), [1, 0, 0], seed=1, num_samples=25)
    ids = [x["id"] for b in torch.utils.data.DataLoader(one, batch_size=5, num_workers=2, collate_fn=lambda b: b)
           for x in b]
    assert len(ids) == 50 and sorted(ids) == sorted(f"web-{i}" for i in range(50))


def test_bad_input_is_named(folders, tmp_path):
    with pytest.raises(ValueError, match=r"weights: missing domains \['proofs'\], unknown domains \['poems'\]"):
        LiveLitdataMixture(_sources(folders), {"web": 1, "code": 1, "poems": 1})
    with pytest.raises(ValueError, match="domain 'code' is a list, not a litdata StreamingDataset"):
        LiveLitdataMixture({"web": _sources(folders)["web"], "code": ["def f(): pass"]})
    mix = LiveLitdataMixture(_sources(folders), seed=2)
    with pytest.raises(ValueError, match="state: saved with seed 2, this LiveLitdataMixture has seed 3"):
        LiveLitdataMixture(_sources(folders), seed=3).load_state_dict(mix.state_dict())
    with pytest.raises(ValueError, match=r"state: saved for domains \['web', 'code', 'proofs'\]"):
        LiveLitdataMixture({"web": _sources(folders)["web"]}, seed=2).load_state_dict(mix.state_dict())
