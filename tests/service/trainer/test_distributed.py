"""Several ranks, one mixture (issue 23 item 6): two CPU processes on the gloo backend; rank 0 alone
talks to a real mixing service, every rank's loaders (the Sampler, the ``datasets`` mixture, the
litdata mixture) sample under the decision it broadcasts, each rank on a disjoint shard."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")
litdata = pytest.importorskip("litdata")
pytestmark = pytest.mark.filterwarnings("ignore:A newer version of litdata")

from tests.service.conftest import TOKEN, free_port  # noqa: E402

DRAWS = 24
STAGES = 3


def _rank(rank: int, world: int, port: int, url: str, folders: dict[str, str], out: str) -> None:
    """One rank: build the loaders after init_process_group, follow rank 0's decisions, record draws."""
    import numpy as np
    import torch.distributed as dist

    from mixagent.service.trainer import Feedback, MixingClient, broadcast_decision
    from mixagent.service.trainer.hf_datasets import LiveMixtureDataset
    from mixagent.service.trainer.litdata_mixture import LiveLitdataMixture
    from mixagent.service.trainer.sampler import LiveWeightSampler
    from mixagent.trajectories import DomainSpace

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    space = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs"]})
    sizes = {"web": 50, "code": 40, "proofs": 30}
    starts = {"web": 0, "code": 50, "proofs": 90}
    sampler = LiveWeightSampler([range(starts[d], starts[d] + n) for d, n in sizes.items()], space.names,
                                num_samples=10_000, seed=1, chunk=4)
    mixture = LiveMixtureDataset({d: datasets.Dataset.from_dict({"id": [f"{d}-{i}" for i in range(n)]})
                                  for d, n in sizes.items()}, seed=1)
    lit = LiveLitdataMixture({d: litdata.StreamingDataset(f, shuffle=True, seed=2) for d, f in folders.items()},
                             seed=1)
    client = MixingClient(url, TOKEN)
    run = client.start_run(space, horizon=STAGES, interval=10, policy="loss-softmax", offline_start=False,
                           report_wait_s=60) if rank == 0 else None
    record: dict[str, Any] = {"decisions": [], "sampler": [], "mixture": [], "litdata": [], "weights": []}
    its = iter(sampler), iter(mixture), iter(lit)
    for stage in range(STAGES + 1):
        if rank == 0 and stage:
            assert run is not None
            losses = {"web": 2.0 + 0.3 * stage, "code": 1.5 - 0.2 * stage, "proofs": 4.0 - 0.6 * stage}
            run.report(Feedback(step=10 * (stage - 1), tokens_seen=4096 * (stage - 1), domain_losses=losses,
                                field_scores={"source": -1.8, "target": -4.0 + 0.5 * stage}))
        decision = broadcast_decision(run, sampler, mixture, lit)
        record["decisions"].append(decision["decision"])
        record["weights"].append([sampler.weights, mixture.weights, lit.weights])
        record["sampler"].append([next(its[0]) for _ in range(DRAWS)])
        record["mixture"].append([next(its[1])["id"] for _ in range(DRAWS)])
        record["litdata"].append([next(its[2])["id"] for _ in range(DRAWS)])
    record["run"] = sampler.run_id
    record["pass"] = {d: len(src) for d, src in lit.sources.items()}  # this rank's examples per litdata pass
    record["state"] = {"rank": lit.state_dict()["rank"], "world": lit.state_dict()["world"]}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    np.testing.assert_equal(len(record["decisions"]), STAGES + 1)
    dist.barrier()
    dist.destroy_process_group()
    client.close()


@pytest.mark.slow
def test_every_rank_samples_under_rank_0s_decision_on_its_own_shard(server, tmp_path):
    from mixagent.service.trainer import MixingClient
    from tests.service.trainer.test_litdata_mixture import write_domains

    folders = write_domains(tmp_path / "litdata")
    torch.multiprocessing.spawn(_rank, args=(2, free_port(), server.url, folders, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    with MixingClient(server.url, TOKEN) as client:
        stored = client.get_run(r0["run"])
    served = [stored["initial_mixture_id"], *(h["decision_id"] for h in stored["history"][:STAGES])]
    assert r0["decisions"] == r1["decisions"] == served  # one decision per stage, the service's, on both ranks
    assert r0["run"] == r1["run"]
    expected = [stored["initial_weights"], *(h["weights"] for h in stored["history"][:STAGES])]
    for rank in (r0, r1):
        for held, want in zip(rank["weights"], expected, strict=True):
            assert all(w == pytest.approx(want) for w in held)  # every loader of the rank follows it
    assert len({json.dumps(w, sort_keys=True) for w in expected}) == STAGES + 1  # the weights changed each stage
    for loader in ("sampler", "mixture"):  # fixed shards: disjoint over every pass
        mine = [{x for stage in r[loader] for x in stage} for r in (r0, r1)]
        assert mine[0] and mine[1] and not mine[0] & mine[1], loader
    for d, size in r0["pass"].items():  # litdata deals its chunks to the ranks each pass: disjoint within one
        assert r1["pass"][d] == size and 0 < size < {"web": 50, "code": 40, "proofs": 30}[d]
        first = [[x for stage in r["litdata"] for x in stage if x.startswith(d)][:size] for r in (r0, r1)]
        assert all(len(set(f)) == len(f) for f in first) and not set(first[0]) & set(first[1]), d
    assert r0["state"] == {"rank": 0, "world": 2} and r1["state"] == {"rank": 1, "world": 2}


def _trainer_rank(rank: int, world: int, port: int, url: str, out: str) -> None:
    """One rank of a DDP Hugging Face Trainer (gloo): only rank 0 holds the run."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import transformers

    from mixagent.service.trainer import LiveWeightSampler, MixagentCallback, MixingClient, MixingTrainer
    from tests.service.trainer.test_hf import SPACE, Tokens, _domain

    args = transformers.TrainingArguments(
        output_dir=out, max_steps=8, per_device_train_batch_size=4, learning_rate=3e-3, eval_strategy="steps",
        eval_steps=4, eval_on_start=True, per_device_eval_batch_size=8, save_strategy="no", report_to=[],
        use_cpu=True, ddp_backend="gloo", logging_steps=100, disable_tqdm=True, include_num_input_tokens_seen=True,
        remove_unused_columns=False)  # initialises torch.distributed: build the sampler after it
    gen = torch.Generator().manual_seed(0)
    rows = torch.cat([_domain(gen, 0, 64), _domain(gen, 8, 64)])
    heldout = {d: Tokens(_domain(gen, lo, 8)) for d, lo in (("low", 0), ("high", 8))}
    seen: list[int] = []

    class Indexed(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": rows[i], "labels": rows[i], "idx": i}

    def collate(batch):  # type: ignore[no-untyped-def]
        if "idx" in batch[0]:
            seen.extend(b["idx"] for b in batch)
        return {k: torch.stack([b[k] for b in batch]) for k in ("input_ids", "labels")}

    client = MixingClient(url, TOKEN)
    run = client.start_run(SPACE, horizon=2, interval=4, policy="loss-softmax") if rank == 0 else None
    sampler = LiveWeightSampler([range(64), range(64, 128)], SPACE.names, num_samples=10_000, chunk=4)
    callback = MixagentCallback(run, sampler)
    config = transformers.LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    trainer = MixingTrainer(model=transformers.LlamaForCausalLM(config), args=args, train_dataset=Indexed(),
                            eval_dataset=heldout, train_sampler=sampler, data_collator=collate, callbacks=[callback])
    trainer.train()
    Path(out, f"trainer-rank{rank}.json").write_text(json.dumps({
        "run": sampler.run_id, "decisions": callback.decisions, "decision": sampler.decision, "seen": seen}))
    client.close()


@pytest.mark.slow
def test_a_ddp_trainer_reports_from_rank_0_and_every_rank_trains_on_its_decisions(server, tmp_path):
    pytest.importorskip("transformers")
    from mixagent.service.trainer import MixingClient

    torch.multiprocessing.spawn(_trainer_rank, args=(2, free_port(), server.url, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"trainer-rank{r}.json").read_text()) for r in (0, 1))
    with MixingClient(server.url, TOKEN) as client:
        stored = client.get_run(r0["run"])
        runs = client._request("GET", "/v1/runs").json()["count"]
    assert runs == 1 and r1["run"] == r0["run"]  # one run: rank 1 never asked the service
    assert [h["step"] for h in stored["history"]] == [0, 4, 8] and stored["done"]
    for rank in (r0, r1):
        assert [s for s, _ in rank["decisions"]] == [0, 4, 8]
        assert [w for _, w in rank["decisions"]] == [pytest.approx(h["weights"]) for h in stored["history"]]
        assert rank["decision"] == stored["history"][-1]["decision_id"]
    assert r0["seen"] and r1["seen"] and not set(r0["seen"]) & set(r1["seen"])  # disjoint shards
