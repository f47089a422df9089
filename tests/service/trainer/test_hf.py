"""The Hugging Face integration: a real (tiny) Trainer run with the service in the loop."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mixagent.service.trainer.client import MixingClient  # noqa: E402
from mixagent.service.trainer.hf import MixagentCallback, MixingTrainer  # noqa: E402
from mixagent.service.trainer.sampler import LiveWeightSampler  # noqa: E402
from mixagent.trajectories import DomainSpace  # noqa: E402
from tests.service.conftest import TOKEN  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def _domain(gen: torch.Generator, lo: int, n: int) -> torch.Tensor:
    """Sequences of an arithmetic pattern over its own token range: each domain is learnable."""
    start = torch.randint(0, 8, (n, 1), generator=gen)
    return lo + (start + torch.arange(16)) % 8


def test_trainer_reports_each_evaluation_and_trains_on_the_returned_weights(server, tmp_path):
    gen = torch.Generator().manual_seed(0)
    space = DomainSpace.from_fields({"source": ["low"], "target": ["high"]})
    train = {"low": _domain(gen, 0, 64), "high": _domain(gen, 8, 64)}
    heldout = {d: Tokens(_domain(gen, lo, 8)) for d, lo in (("low", 0), ("high", 8))}
    dataset = Tokens(torch.cat([train["low"], train["high"]]))
    config = transformers.LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(space, horizon=2, interval=4, policy="loss-softmax")
        sampler = LiveWeightSampler([range(64), range(64, 128)], space.names, run.weights, num_samples=10_000)
        callback = MixagentCallback(run, sampler, tokens_per_step=4 * 16)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4, learning_rate=3e-3,
            eval_strategy="steps", eval_steps=4, eval_on_start=True, per_device_eval_batch_size=8,
            save_strategy="no", report_to=[], use_cpu=True, logging_steps=100, disable_tqdm=True,
        )
        trainer = MixingTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=heldout,
                                train_sampler=sampler, callbacks=[callback])
        assert trainer.get_train_dataloader().sampler is sampler or trainer._get_train_sampler() is sampler
        trainer.train()
        stored = client.get_run(run.run_id)
    assert [s for s, _ in callback.decisions] == [0, 4, 8]
    assert [h["step"] for h in stored["history"]] == [0, 4, 8]
    assert [h["tokens_seen"] for h in stored["history"]] == [0, 256, 512]
    assert stored["done"]
    # the sampler trains on what the service decided last
    assert sampler.weights == pytest.approx(stored["history"][-1]["weights"])
    h = stored["history"]
    assert h[1]["domain_losses"]["high"] < h[0]["domain_losses"]["high"]  # real training happened
    assert h[0]["field_scores"]["target"] == pytest.approx(-h[0]["domain_losses"]["high"])
