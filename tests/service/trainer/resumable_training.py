"""A small training job for the exact-resume test (tests/service/trainer/test_resume.py): a byte-level
model trained in a plain loop on a mixagent loader, reporting to a real mixing service every
``interval`` steps and following its decisions, checkpointing every ``every`` steps; started again
on the same ``--out`` it resumes from its last checkpoint.

    python tests/service/trainer/resumable_training.py --loader sampler --url URL --token TOKEN --out DIR \\
        --log FILE [--pause-at STEP] [--litdata ROOT]

Each step appends ``{"step", "ids", "run", "decision"}`` (the sample ids trained on) to ``--log``;
``--pause-at`` prints ``paused at STEP`` after that step and waits to be killed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mixagent.service.trainer import DomainSpace, Feedback, MixingClient, MixingRun, field_scores

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs"]})
TEXT = {"web": "web document {i} about the weather", "code": "def f{i}(x): return x + {i}",
        "proofs": "Lemma l{i}: forall n, n + {i} = {i} + n."}
SIZES = {"web": 50, "code": 40, "proofs": 30}
WIDTH = 48
BATCH = 4


def examples(domain: str, ids: range) -> list[dict[str, str]]:
    return [{"id": f"{domain}-{i}", "text": TEXT[domain].format(i=i)} for i in ids]


def build_loader(kind: str, litdata_root: str | None) -> tuple[Any, torch.utils.data.DataLoader[Any]]:
    """The mixagent loader under test and the DataLoader that batches it (no workers: exact resume)."""
    if kind == "sampler":
        from mixagent.service.trainer.sampler import LiveWeightSampler

        flat = [e for d in SPACE.names for e in examples(d, range(SIZES[d]))]
        starts = [sum(SIZES[n] for n in SPACE.names[:k]) for k in range(len(SPACE.names))]
        sampler = LiveWeightSampler([range(s, s + SIZES[d]) for s, d in zip(starts, SPACE.names, strict=True)],
                                    SPACE.names, num_samples=100_000, seed=3, chunk=BATCH)
        return sampler, torch.utils.data.DataLoader(flat, batch_size=BATCH, sampler=sampler, collate_fn=list)
    if kind == "datasets":
        import datasets

        from mixagent.service.trainer.hf_datasets import LiveMixtureDataset

        def frame(d: str) -> Any:
            rows = examples(d, range(SIZES[d]))
            return datasets.Dataset.from_dict({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]})

        sources = {"web": frame("web"), "code": frame("code"), "proofs": frame("proofs").to_iterable_dataset()}
        mixture: Any = LiveMixtureDataset(sources, seed=3)
    else:
        import litdata

        from mixagent.service.trainer.litdata_mixture import LiveLitdataMixture

        assert litdata_root is not None, "--litdata ROOT: the domains' folders in litdata's format"
        mixture = LiveLitdataMixture({d: litdata.StreamingDataset(str(Path(litdata_root) / d), shuffle=True, seed=5)
                                      for d in SPACE.names}, seed=3)
    return mixture, torch.utils.data.DataLoader(mixture, batch_size=BATCH, collate_fn=list)


def encode(texts: list[str]) -> torch.Tensor:
    out = torch.zeros((len(texts), WIDTH), dtype=torch.long)
    for r, t in enumerate(texts):
        b = list(t.encode()[:WIDTH])
        out[r, : len(b)] = torch.tensor(b)
    return out


def loss_of(model: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    x = encode(texts)
    logits = model(x[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1), ignore_index=0)


def feedback(model: torch.nn.Module, step: int) -> Feedback:
    with torch.no_grad():
        losses = {d: float(loss_of(model, [e["text"] for e in examples(d, range(1000, 1006))])) for d in SPACE.names}
    return Feedback(step=step, tokens_seen=step * BATCH * WIDTH, domain_losses=losses,
                    field_scores=field_scores(SPACE, {d: -v for d, v in losses.items()}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--loader", choices=["sampler", "datasets", "litdata"], required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--litdata")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--interval", type=int, default=6)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--pause-at", type=int)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(256, 32), torch.nn.Linear(32, 256))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    loader, batches = build_loader(a.loader, a.litdata)
    client = MixingClient(a.url, a.token)
    a.out.mkdir(parents=True, exist_ok=True)
    checkpoint = a.out / "checkpoint.pt"
    if checkpoint.is_file():  # resume: model, optimizer, loader, and the run the loader samples for
        ck = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        loader.load_state_dict(ck["loader"])
        run = MixingRun(client, SPACE, {"run_id": loader.run_id, "policy": ck["policy"],
                                        "policy_version": ck["policy_version"], "mixture_id": loader.decision,
                                        "weights": loader.weights}, report_wait_s=60)
        step = ck["step"]
    else:
        run = client.start_run(SPACE, horizon=a.steps // a.interval, interval=a.interval, policy="loss-softmax",
                               offline_start=False, report_wait_s=60)
        run.report(feedback(model, 0))
        loader.follow(run)
        step = 0
    it = iter(batches)
    with a.log.open("a") as log:
        while step < a.steps:
            batch = next(it)
            opt.zero_grad()
            loss_of(model, [e["text"] for e in batch]).backward()
            opt.step()
            step += 1
            log.write(json.dumps({"step": step, "ids": [e["id"] for e in batch], "run": loader.run_id,
                                  "decision": loader.decision}) + "\n")
            log.flush()
            if step % a.interval == 0:
                run.report(feedback(model, step))
                loader.follow(run)
            if step % a.every == 0:
                tmp = checkpoint.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "loader": loader.state_dict(),
                            "step": step, "policy": run.policy, "policy_version": run.policy_version}, tmp)
                os.replace(tmp, checkpoint)
            if step == a.pause_at:
                print(f"paused at {step}", flush=True)
                time.sleep(600)
    run.close()
    client.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
