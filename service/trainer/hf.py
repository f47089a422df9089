"""Hugging Face ``Trainer`` integration: report evaluations to the mixing service, train on its
weights.

Wire it like this (``eval_dataset`` a dict of per-domain held-out sets, so the Trainer reports
``eval_<domain>_loss``; evaluate at step 0 and then every ``interval`` steps)::

    sampler = LiveWeightSampler(domain_indices, space.names, run.weights, num_samples=...)
    trainer = MixingTrainer(
        model=model, args=TrainingArguments(..., eval_strategy="steps", eval_steps=interval,
                                            eval_on_start=True),
        train_dataset=train, eval_dataset={d: heldout[d] for d in space.names},
        train_sampler=sampler, callbacks=[MixagentCallback(run, sampler)],
    )

Field score = minus the mean held-out loss of the field's domains (the mean per-token
log-likelihood, higher is better), as in :class:`~mixagent.trajectories.Feedback`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from mixagent.service.trainer.client import MixingRun
from mixagent.trajectories.contract import Feedback

if TYPE_CHECKING:
    from mixagent.service.trainer.sampler import LiveWeightSampler

__all__ = ["MixagentCallback", "MixingTrainer"]

log = logging.getLogger(__name__)


class MixagentCallback(TrainerCallback):
    """After each evaluation, post the feedback of that step and put the returned weights into the
    sampler. Evaluations of a dict ``eval_dataset`` arrive one domain at a time; the feedback is
    posted once every domain of the run's space has reported for the step."""

    def __init__(self, run: MixingRun, sampler: LiveWeightSampler | None = None, tokens_per_step: int = 0):
        self.run = run
        self.sampler = sampler
        self.tokens_per_step = tokens_per_step
        self._losses: dict[str, float] = {}
        self._step: int | None = None
        self.decisions: list[tuple[int, dict[str, float]]] = []

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        metrics: dict[str, float] | None = None, **kwargs: Any,
    ) -> None:
        if self._step != state.global_step:
            self._step, self._losses = state.global_step, {}
        for name in self.run.space.names:
            key = f"eval_{name}_loss"
            if metrics and key in metrics:
                self._losses[name] = float(metrics[key])
        if len(self._losses) < self.run.space.size:
            return
        space = self.run.space
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) or state.global_step * self.tokens_per_step
        feedback = Feedback(
            step=state.global_step,
            tokens_seen=tokens,
            field_scores={f: -sum(self._losses[d] for d in space.domains_of(f)) / len(space.domains_of(f))
                          for f in space.fields},
            domain_losses=dict(self._losses),
        )
        weights = self.run.report(feedback)
        if self.sampler is not None:
            self.sampler.set_weights(weights)
        self.decisions.append((state.global_step, weights))
        self._losses = {}


class MixingTrainer(Trainer):
    """A ``Trainer`` that draws training examples through a given sampler (e.g. a
    :class:`LiveWeightSampler`) instead of its default random sampler."""

    def __init__(self, *args: Any, train_sampler: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._mixing_sampler = train_sampler

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self._mixing_sampler is not None:
            return self._mixing_sampler
        return super()._get_train_sampler(train_dataset)
