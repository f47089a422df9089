"""The Hugging Face integration: real (tiny) Trainer runs with the service in the loop, the one field
score definition (the env's, checked on the env's own model and windows), and misuse that fails at
once or is said once, with the fix."""

from __future__ import annotations

import logging
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mixagent.service.trainer import (  # noqa: E402
    LiveWeightSampler,
    MixagentCallback,
    MixingClient,
    MixingTrainer,
    field_score_metrics,
)
from mixagent.service.trainer.scores import field_scores  # noqa: E402
from mixagent.trajectories import DomainSpace  # noqa: E402
from tests.service.conftest import TOKEN  # noqa: E402

SPACE = DomainSpace.from_fields({"source": ["low"], "target": ["high"]})
LOGGER = "mixagent.service.trainer"


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


def _setup(run, tmp_path, *, trainer_cls=None, eval_dataset="dict", callback_kw=None, **args):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    train = {"low": _domain(gen, 0, 64), "high": _domain(gen, 8, 64)}
    heldout = {d: Tokens(_domain(gen, lo, 8)) for d, lo in (("low", 0), ("high", 8))}
    if eval_dataset == "single":
        heldout = heldout["low"]
    elif eval_dataset == "misnamed":
        heldout = {"lo": heldout["low"], "high": heldout["high"]}
    config = transformers.LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    sampler = LiveWeightSampler([range(64), range(64, 128)], SPACE.names, run.weights, num_samples=10_000)
    callback = MixagentCallback(run, sampler, **(callback_kw or {}))
    kw = dict(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4, learning_rate=3e-3,
              eval_strategy="steps", eval_steps=4, eval_on_start=True, per_device_eval_batch_size=8,
              save_strategy="no", report_to=[], use_cpu=True, logging_steps=100, disable_tqdm=True,
              include_num_input_tokens_seen=True)
    kw.update(args)
    targs = transformers.TrainingArguments(**kw)
    dataset = Tokens(torch.cat([train["low"], train["high"]]))
    if trainer_cls is None:
        return MixingTrainer(model=model, args=targs, train_dataset=dataset, eval_dataset=heldout,
                             train_sampler=sampler, callbacks=[callback]), callback, sampler
    return trainer_cls(model=model, args=targs, train_dataset=dataset, eval_dataset=heldout,
                       callbacks=[callback]), callback, sampler


def test_trainer_reports_each_evaluation_and_trains_on_the_returned_weights(server, tmp_path, caplog):
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=2, interval=4, policy="loss-softmax")
        trainer, callback, sampler = _setup(run, tmp_path)
        assert trainer.get_train_dataloader().sampler is sampler or trainer._get_train_sampler() is sampler
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            trainer.train()
        stored = client.get_run(run.run_id)
    assert caplog.text == ""  # wired as documented: nothing to warn about
    logged = [e for e in trainer.state.log_history if "mixagent/weight/low" in e]
    assert [e["step"] for e in logged] == [0, 4, 8]  # the schedule, in trainer_state.json too
    assert logged[-1]["mixagent/weight/high"] == pytest.approx(stored["history"][-1]["weights"]["high"])
    assert [s for s, _ in callback.decisions] == [0, 4, 8]
    assert [h["step"] for h in stored["history"]] == [0, 4, 8]
    assert [h["tokens_seen"] for h in stored["history"]] == [0, 256, 512]  # counted by the Trainer
    assert stored["done"]
    # the sampler trains on what the service decided last
    assert sampler.weights == pytest.approx(stored["history"][-1]["weights"])
    h = stored["history"]
    assert h[1]["domain_losses"]["high"] < h[0]["domain_losses"]["high"]  # real training happened
    # the field score is the continuation log-likelihood, not minus the window's mean loss
    assert h[0]["field_scores"]["target"] != pytest.approx(-h[0]["domain_losses"]["high"], abs=1e-6)
    assert h[2]["field_scores"]["target"] > h[0]["field_scores"]["target"]


def test_the_field_score_is_the_envs_on_the_same_model_and_windows(tiny_backend, tmp_path):
    """One definition: MixingTrainer's evaluation of the env's base model on the env's held-out windows
    gives the env's field scores and domain losses."""
    backend = tiny_backend
    space = backend.space
    windows, rows = backend.eval_set.windows, backend.eval_set.domain_of_row
    heldout = {d: Tokens(windows[torch.as_tensor(rows == k)]) for k, d in enumerate(space.names)}
    expected = backend.evaluate()
    per_batch = max(len(v) for v in heldout.values())
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=per_batch,
                                          report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = MixingTrainer(model=backend.model, args=args, eval_dataset=heldout)
    metrics = trainer.evaluate()
    scores = field_scores(space, {d: metrics[f"eval_{d}_continuation_loglik"] for d in space.names})
    assert scores == pytest.approx(expected.field_scores, abs=1e-5)
    assert {d: metrics[f"eval_{d}_loss"] for d in space.names} == pytest.approx(expected.domain_losses, abs=1e-5)


@pytest.mark.parametrize(("case", "message"), [
    ("single", "eval_dataset: a Tokens; pass a dict of held-out datasets keyed by the run's domain names"),
    ("misnamed", "eval_dataset: keys must be the run's domain names ['low', 'high']; missing ['low'], "
                 "unknown ['lo']"),
])
def test_an_eval_dataset_the_run_cannot_use_is_refused_at_once(server, tmp_path, case, message):
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=2, interval=4)
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            _setup(run, tmp_path, eval_dataset=case)
        # a plain Trainer: the first evaluation (step 0, before any training) says the same
        trainer, _, _ = _setup(run, tmp_path, eval_dataset=case, trainer_cls=_plain_trainer())
        with pytest.raises(ValueError, match="MixagentCallback: eval_dataset"):
            trainer.train()
        assert client.get_run(run.run_id)["decisions"] == 0


def _plain_trainer():  # type: ignore[no-untyped-def]
    class Plain(transformers.Trainer):
        def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
            super().__init__(*a, **kw, **field_score_metrics())

    return Plain


def test_eval_on_start_false_or_no_evaluation_is_refused_before_training(server, tmp_path):
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=2, interval=4)
        trainer, _, _ = _setup(run, tmp_path, eval_on_start=False)
        with pytest.raises(ValueError, match=r"eval_on_start=False .* set TrainingArguments\(eval_on_start=True\)"):
            trainer.train()
        trainer, _, _ = _setup(run, tmp_path, eval_strategy="no")
        with pytest.raises(ValueError, match=r"never evaluates.* eval_steps=4"):
            trainer.train()
        assert client.get_run(run.run_id)["decisions"] == 0


def test_a_plain_trainer_without_the_field_score_metric_is_told_how_to_add_it(server, tmp_path):
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=2, interval=4)
        trainer, _, _ = _setup(run, tmp_path, trainer_cls=transformers.Trainer)
        with pytest.raises(ValueError, match=r"no eval_\w+_continuation_loglik .*field_score_metrics\(\)"):
            trainer.train()


def test_uncounted_tokens_and_a_short_horizon_are_said_once_and_training_ends_gracefully(server, tmp_path, caplog):
    """No token count: warned once by the callback (and once from the service's answer); horizon 1
    for 3 evaluations: warned before training, the last evaluation is not sent, the Trainer finishes."""
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=1, interval=4, policy="loss-softmax")
        trainer, callback, _ = _setup(run, tmp_path, include_num_input_tokens_seen=False)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            trainer.train()
        stored = client.get_run(run.run_id)
    text = caplog.text
    assert text.count("every feedback would say tokens_seen = 0") == 1 and "tokens_per_step" in text
    assert text.count("mixagent service: tokens_seen: 0 at step 4") == 1
    assert "evaluates 3 times but the run takes horizon + 1 = 2 feedbacks" in text and "horizon=2" in text
    assert text.count("is done") == 1
    assert [h["step"] for h in stored["history"]] == [0, 4] and stored["done"]
    assert [s for s, _ in callback.decisions] == [0, 4, 8]  # the last one kept the last weights


def test_the_trainer_trains_on_a_live_datasets_mixture(server, tmp_path):
    """``LiveMixtureDataset`` over real ``datasets`` objects as the Trainer's ``train_dataset``: the
    callback puts every decision into it and the examples drawn after it follow."""
    datasets = pytest.importorskip("datasets")
    from mixagent.service.trainer.hf_datasets import LiveMixtureDataset

    gen = torch.Generator().manual_seed(0)
    sources = {d: datasets.Dataset.from_dict({"input_ids": _domain(gen, lo, 64).tolist()}).map(
        lambda r: {"labels": r["input_ids"]}) for d, lo in (("low", 0), ("high", 8))}
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=2, interval=4, policy="loss-softmax")
        trainer, callback, _ = _setup(run, tmp_path)
        mixture = LiveMixtureDataset(sources, run.weights, seed=0, domain_key=None)
        callback.sampler = mixture
        trainer = MixingTrainer(model=trainer.model, args=trainer.args, train_dataset=mixture,
                                eval_dataset=trainer.eval_dataset, callbacks=[callback])
        trainer.train()
        stored = client.get_run(run.run_id)
    assert [h["step"] for h in stored["history"]] == [0, 4, 8] and stored["done"]
    assert mixture.weights == pytest.approx(stored["history"][-1]["weights"])
    assert mixture.state_dict()["draws"] >= 8 * 4  # every optimizer step drew its batch from the mixture


def test_a_resumed_trainer_draws_exactly_the_examples_of_the_uninterrupted_run(tmp_path):
    """``Trainer.train(resume_from_checkpoint=...)`` with the mixture's checkpoint callback: after
    weight changes at every step, the resumed run's batches are the uninterrupted run's."""
    datasets = pytest.importorskip("datasets")
    from mixagent.service.trainer.hf_datasets import LiveMixtureDataset, mixture_checkpoint_callback

    gen = torch.Generator().manual_seed(0)
    rows = {d: _domain(gen, lo, 32).tolist() for d, lo in (("low", 0), ("high", 8))}

    class Reweight(transformers.TrainerCallback):  # a decision at every step: the schedule to follow
        def __init__(self, mixture):  # type: ignore[no-untyped-def]
            self.mixture = mixture

        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            p = 0.1 + 0.8 * ((state.global_step * 7) % 10) / 10
            self.mixture.set_weights({"low": p, "high": 1 - p})

    class StopAt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            control.should_training_stop = state.global_step == 4

    def train(out, resume=None, stop=False):  # type: ignore[no-untyped-def]
        seen: list[list[str]] = []
        sources = {d: datasets.Dataset.from_dict({"input_ids": r, "id": [f"{d}-{i}" for i in range(len(r))]})
                   for d, r in rows.items()}
        mixture = LiveMixtureDataset(sources, seed=5, domain_key=None)

        def collate(batch):  # type: ignore[no-untyped-def]
            seen.append([b["id"] for b in batch])
            ids = torch.tensor([b["input_ids"] for b in batch])
            return {"input_ids": ids, "labels": ids}

        config = transformers.LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
        torch.manual_seed(0)
        args = transformers.TrainingArguments(output_dir=str(out), max_steps=8, per_device_train_batch_size=4,
                                              save_strategy="steps", save_steps=4, report_to=[], use_cpu=True,
                                              disable_tqdm=True, ignore_data_skip=True, logging_steps=100,
                                              remove_unused_columns=False)
        callbacks = [Reweight(mixture), mixture_checkpoint_callback(mixture)] + ([StopAt()] if stop else [])
        trainer = transformers.Trainer(model=transformers.LlamaForCausalLM(config), args=args, train_dataset=mixture,
                                       data_collator=collate, callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        return seen

    straight = train(tmp_path / "a")
    first = train(tmp_path / "b", stop=True)
    resumed = train(tmp_path / "b", resume=str(tmp_path / "b" / "checkpoint-4"))
    # the Trainer (through accelerate) fetches one batch beyond the one it trains on: 9 collated for 8
    # steps, 5 for the first 4; the resumed run draws the 5th again, then exactly what followed
    assert len(straight) == 9 and first == straight[:5]
    assert resumed[:4] == straight[4:8]
    assert (tmp_path / "b" / "checkpoint-4" / "mixagent_mixture.json").is_file()


def test_the_callback_resumes_its_sampler_and_run_from_a_checkpoint_without_extra_code(server, tmp_path, caplog):
    """``MixagentCallback`` alone: every checkpoint keeps its sampler's state, and
    ``train(resume_from_checkpoint=...)`` of a run stopped mid-interval (checkpoint at 6, stopped at 7,
    evaluations every 4) trains on exactly the uninterrupted run's batches and sends the rest of the
    feedbacks to the checkpoint's run, which gets the uninterrupted run's decisions."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.cat([_domain(gen, 0, 64), _domain(gen, 8, 64)])
    heldout = {d: Tokens(_domain(gen, lo, 8)) for d, lo in (("low", 0), ("high", 8))}

    class Indexed(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": rows[i], "labels": rows[i], "idx": i}

    class StopAt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            control.should_training_stop = state.global_step == 7

    def train(client, out, resume=None, stop=False):  # type: ignore[no-untyped-def]
        seen: list[list[int]] = []

        def collate(batch):  # type: ignore[no-untyped-def]
            if "idx" in batch[0]:  # a training batch (the evaluations collate through here too)
                seen.append([b["idx"] for b in batch])
            return {k: torch.stack([b[k] for b in batch]) for k in ("input_ids", "labels")}

        run = client.start_run(SPACE, horizon=3, interval=4, policy="loss-softmax")  # as a restarted script does
        sampler = LiveWeightSampler([range(64), range(64, 128)], SPACE.names, run.weights, num_samples=10_000, chunk=4)
        config = transformers.LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
        torch.manual_seed(0)
        args = transformers.TrainingArguments(
            output_dir=str(out), max_steps=12, per_device_train_batch_size=4, learning_rate=3e-3,
            eval_strategy="steps", eval_steps=4, eval_on_start=True, per_device_eval_batch_size=8,
            save_strategy="steps", save_steps=6, report_to=[], use_cpu=True, logging_steps=100, disable_tqdm=True,
            include_num_input_tokens_seen=True, ignore_data_skip=True, remove_unused_columns=False)
        trainer = MixingTrainer(model=transformers.LlamaForCausalLM(config), args=args, train_dataset=Indexed(),
                                eval_dataset=heldout, train_sampler=sampler, data_collator=collate,
                                callbacks=[MixagentCallback(run, sampler), *([StopAt()] if stop else [])])
        trainer.train(resume_from_checkpoint=resume)
        return seen, run.run_id, sampler

    with MixingClient(server.url, TOKEN) as client:
        straight, straight_run, _ = train(client, tmp_path / "a")
        first, first_run, _ = train(client, tmp_path / "b", stop=True)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            resumed, _, sampler = train(client, tmp_path / "b", resume=str(tmp_path / "b" / "checkpoint-6"))
        runs = [client.get_run(straight_run), client.get_run(first_run)]
    # accelerate fetches one batch ahead: 13 collated for 12 steps, 8 for the first 7
    assert len(straight) == 13 and first == straight[:8]
    assert resumed[:6] == straight[6:12]  # steps 7-12: the same examples in the same order
    assert f"resuming run {first_run} from the checkpoint at step 6" in caplog.text
    assert sampler.run_id == first_run
    history = [[(h["step"], h["weights"]) for h in run["history"]] for run in runs]
    assert [s for s, _ in history[1]] == [0, 4, 8, 12] and history[1] == history[0]  # the same decisions
    assert len({tuple(w.values()) for _, w in history[1]}) == 4  # each decision changed the mixture
