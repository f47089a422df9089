"""Hugging Face ``Trainer`` integration: report evaluations to the mixing service, train on its
weights.

Wire it like this (``eval_dataset`` a dict of per-domain held-out sets keyed by the run's domain
names, so the Trainer reports ``eval_<domain>_loss``; evaluate at step 0 and then every ``interval``
steps; count the tokens trained on)::

    run = client.start_run(space, horizon=max_steps // interval, interval=interval)  # evaluations - 1
    sampler = LiveWeightSampler(domain_indices, space.names, run.weights, num_samples=...)
    trainer = MixingTrainer(
        model=model, args=TrainingArguments(..., eval_strategy="steps", eval_steps=interval,
                                            eval_on_start=True, include_num_input_tokens_seen=True),
        train_dataset=train, eval_dataset={d: heldout[d] for d in space.names},
        train_sampler=sampler, callbacks=[MixagentCallback(run, sampler)],
    )

The field score is the service's one definition (:mod:`mixagent.service.trainer.scores`): the mean
log-likelihood of the second half of each held-out window given the first half, per domain, averaged
over the field's domains. :class:`MixingTrainer` computes it during evaluation
(``eval_<domain>_continuation_loglik``); with a plain ``Trainer`` pass ``**field_score_metrics()``.

Misuse fails at once or is said once, with the fix: an ``eval_dataset`` that is not a dict keyed by
the run's domain names, ``eval_on_start=False`` (the step-0 evaluation is the run's reference), no
evaluations at all, or evaluations without the field-score metric raise ``ValueError``; an
``eval_steps`` other than the run's interval, more evaluations than the run's ``horizon + 1``, and no
token count (``tokens_seen`` would stay 0) are logged once as warnings.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from mixagent.console import missing_extra

try:
    import torch
    from transformers import (
        EvalPrediction,
        Trainer,
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )
except ModuleNotFoundError as e:  # torch and transformers come with the train extra
    raise ModuleNotFoundError(missing_extra(e, "mixagent.service.trainer.hf") or str(e), name=e.name) from e

from mixagent.service.trainer.client import MixingRun
from mixagent.service.trainer.distributed import broadcast_decision, rank_and_world
from mixagent.service.trainer.hf_datasets import read_checkpoint_state, write_checkpoint_state
from mixagent.service.trainer.mixture import LiveMixture, ServedWeights, served_by
from mixagent.service.trainer.sampler import LiveWeightSampler
from mixagent.service.trainer.scores import CONTEXT_FRACTION, IGNORE_INDEX, continuation_log_likelihood, field_scores
from mixagent.trajectories.contract import Feedback

if TYPE_CHECKING:
    from mixagent.service.trainer.mixture import LiveWeights

__all__ = ["MixagentCallback", "MixingTrainer", "field_score_metrics", "CONTINUATION_METRIC"]

log = logging.getLogger(__name__)

CONTINUATION_METRIC = "continuation_loglik"
"""The metric each domain's evaluation reports (``eval_<domain>_continuation_loglik``)."""
FLUSH_S = 10.0
"""At the end of training, how long the callback waits for queued feedbacks to be delivered."""


def _token_logprobs(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """``preprocess_logits_for_metrics``: keep only ``log p(next label)`` per position (``[B, T-1]``),
    not the ``[B, T, vocab]`` logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    shifted = labels[:, 1:]
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = lp.gather(-1, shifted.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(shifted == IGNORE_INDEX, 0.0)


def field_score_metrics(context_fraction: float = CONTEXT_FRACTION) -> dict[str, Any]:
    """``Trainer`` arguments that make each evaluation report the continuation log-likelihood the
    field score is made of (``Trainer(..., **field_score_metrics())``; :class:`MixingTrainer` sets
    them itself)."""

    def compute_metrics(pred: EvalPrediction) -> dict[str, float]:
        labels = pred.label_ids[0] if isinstance(pred.label_ids, tuple) else pred.label_ids
        return {CONTINUATION_METRIC: continuation_log_likelihood(np.asarray(pred.predictions), np.asarray(labels),
                                                                 context_fraction)}

    return {"compute_metrics": compute_metrics, "preprocess_logits_for_metrics": _token_logprobs}


class MixagentCallback(TrainerCallback):
    """After each evaluation, post the feedback of that step and put the returned weights into the
    sampler. Evaluations of a dict ``eval_dataset`` arrive one domain at a time; the feedback is
    posted once every domain of the run's space has reported for the step.

    ``tokens_per_step``: the tokens of one optimizer step, used when the Trainer does not count them
    (``include_num_input_tokens_seen``).

    **Exact resume.** With a mixagent loader (a :class:`LiveWeightSampler` or a mixture) every
    checkpoint keeps its state, and ``Trainer.train(resume_from_checkpoint=...)`` (with
    ``TrainingArguments(ignore_data_skip=True)``) trains on exactly the batches of the uninterrupted
    run: the loader goes on from the checkpoint, the feedbacks go to the run it followed (a run the
    restarted script created gets none; said once), and the evaluation a resumed Trainer makes at
    its first step (``eval_on_start``) is not reported again.

    **Several ranks** (``torch.distributed``, e.g. DDP): only rank 0 holds the run
    (``MixagentCallback(run if rank == 0 else None, loader)``, the loader built after the process
    group, so on its rank's shard); after each evaluation rank 0 reports, and every rank's loader
    receives its decision (:func:`~mixagent.service.trainer.distributed.broadcast_decision`). Each rank
    keeps its own loader state in a checkpoint (``mixagent_mixture.rank<r>.json``)."""

    def __init__(self, run: MixingRun | None, sampler: LiveWeights | None = None, tokens_per_step: int = 0):
        self.run = run
        self.sampler = sampler
        self.tokens_per_step = tokens_per_step
        self._losses: dict[str, float] = {}
        self._scores: dict[str, float] = {}
        self._step: int | None = None
        self._resumed_at: int | None = None
        """The step a resumed Trainer started from (its evaluation there was reported before the checkpoint)."""
        self.decisions: list[tuple[int, dict[str, float]]] = []

    @property
    def names(self) -> list[str]:
        """The run's domain names (on a rank without the run: its loader's)."""
        if self.run is not None:
            return list(self.run.space.names)
        assert isinstance(self.sampler, ServedWeights)
        return list(self.sampler.names)

    # ----- checks, before any training ----------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        rank, world = rank_and_world()
        if world > 1 and not isinstance(self.sampler, ServedWeights):
            raise ValueError(f"MixagentCallback: under torch.distributed ({world} ranks) every rank needs a mixagent "
                             "loader (LiveWeightSampler or a mixture) to receive rank 0's decisions, got "
                             f"{type(self.sampler).__name__}")
        if self.run is None:
            if rank == 0:
                raise ValueError("MixagentCallback: run is None on rank 0; rank 0 talks to the service and needs the "
                                 "run (only the other ranks of torch.distributed pass None)")
            if state.global_step > 0:
                self._resume(args, state)
            return  # rank 0 checks the arguments and says what it finds
        run = self.run
        if args.eval_strategy == "no":
            raise ValueError(f"MixagentCallback: the Trainer never evaluates, so the service gets no feedback; set "
                             f"TrainingArguments(eval_strategy='steps', eval_steps={run.interval}, "
                             "eval_on_start=True)")
        if not args.eval_on_start and state.global_step == 0:
            raise ValueError("MixagentCallback: eval_on_start=False makes the first evaluation after training the "
                             "run's reference, so no gain is measured from the start; set "
                             "TrainingArguments(eval_on_start=True)")
        interval = run.interval
        if args.eval_strategy == "steps" and interval and args.eval_steps != interval:
            log.warning("MixagentCallback: eval_steps=%s but the run's interval is %s optimizer steps per decision; "
                        "set TrainingArguments(eval_steps=%s)", args.eval_steps, interval, interval)
        horizon = run.horizon
        if args.eval_strategy == "steps" and args.max_steps > 0 and args.eval_steps and horizon is not None:
            evaluations = 1 + int(args.max_steps // args.eval_steps)
            if evaluations > horizon + 1:
                log.warning("MixagentCallback: this training evaluates %d times but the run takes horizon + 1 = %d "
                            "feedbacks (horizon counts decisions, not steps); the last %d evaluations get no "
                            "decision and train on the last weights. Start the run with horizon=%d",
                            evaluations, horizon + 1, evaluations - horizon - 1, evaluations - 1)
        if args.include_num_input_tokens_seen in ("no", False) and not self.tokens_per_step:
            log.warning("MixagentCallback: the Trainer does not count tokens, so every feedback would say "
                        "tokens_seen = 0; set TrainingArguments(include_num_input_tokens_seen=True) or "
                        "MixagentCallback(tokens_per_step=...)")
        if state.global_step > 0:
            self._resume(args, state)

    def _resume(self, args: TrainingArguments, state: TrainerState) -> None:
        """A Trainer resumed from a checkpoint: the loader goes on from the state saved there, and the
        feedbacks go to the run that loader followed (not to a run this process may have started)."""
        self._resumed_at = state.global_step
        if not isinstance(self.sampler, LiveWeightSampler | LiveMixture):
            return
        read_checkpoint_state(self.sampler, args, state, "MixagentCallback")
        followed = self.sampler.run_id
        if self.run is None or followed is None or followed == self.run.run_id:
            return
        started, stored = self.run, self.run.client.get_run(followed, limit=1)
        self.run = MixingRun(started.client, started.space, {
            "run_id": followed, "policy": stored["policy"], "policy_version": stored["policy_version"],
            "horizon": stored["horizon"], "interval": stored["interval"], "mixture_id": self.sampler.decision,
            "weights": self.sampler.weights}, report_wait_s=started.report_wait_s)
        log.warning("MixagentCallback: resuming run %s from the checkpoint at step %d (run %s, started by this "
                    "process, gets no feedback)", followed, state.global_step, started.run_id)

    # ----- one feedback per evaluation step ----------------------------------------------------
    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
        metrics: dict[str, float] | None = None, **kwargs: Any,
    ) -> None:
        if state.global_step == self._resumed_at:  # eval_on_start of a resumed run: reported before the checkpoint
            return
        domains = self.names
        metrics = metrics or {}
        if "eval_loss" in metrics:
            raise ValueError("MixagentCallback: eval_dataset is a single dataset; pass a dict of held-out datasets "
                             f"keyed by the run's domain names, {{name: dataset}} for {domains}")
        names = {k[len("eval_"):-len("_loss")] for k in metrics if k.startswith("eval_") and k.endswith("_loss")}
        unknown = sorted(names - set(domains))
        if unknown:
            raise ValueError(f"MixagentCallback: eval_dataset keys {unknown} are not domains of the run; key it by "
                             f"the run's domain names {domains}")
        if self._step != state.global_step:
            missing = sorted(set(domains) - set(self._losses))
            if self._step is not None and self._losses and missing:
                raise ValueError(f"MixagentCallback: the evaluation at step {self._step} had no eval_dataset for "
                                 f"domains {missing}; key eval_dataset by every domain of the run")
            self._step, self._losses, self._scores = state.global_step, {}, {}
        for name in names:
            score = metrics.get(f"eval_{name}_{CONTINUATION_METRIC}")
            if score is None:
                raise ValueError(f"MixagentCallback: no eval_{name}_{CONTINUATION_METRIC} among the metrics, so no "
                                 "field score; use MixingTrainer, or pass Trainer(..., **field_score_metrics())")
            self._losses[name] = float(metrics[f"eval_{name}_loss"])
            self._scores[name] = float(score)
        if len(self._losses) < len(domains):
            return
        if self.run is not None:
            tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) or state.global_step * self.tokens_per_step
            self.run.report(Feedback(
                step=state.global_step,
                tokens_seen=tokens,
                field_scores=field_scores(self.run.space, self._scores),
                domain_losses={n: self._losses[n] for n in domains},
            ))
        if rank_and_world()[1] > 1:  # a collective: every rank receives rank 0's decision
            weights = dict(broadcast_decision(self.run, *[self.sampler] if isinstance(self.sampler, ServedWeights)
                                              else [])["weights"])
        else:
            assert self.run is not None
            weights = self.run.weights
            if isinstance(self.sampler, ServedWeights):  # a mixagent loader: it keeps the decision in its state
                self.sampler.set_weights(weights, **served_by(self.run))
            elif self.sampler is not None:
                self.sampler.set_weights(weights)
        self.decisions.append((state.global_step, weights))
        served = ((self.run.served_by or {}).get("fallback") or (self.run.served_by or {}).get("policy", "")
                  if self.run is not None else "rank 0's")
        log.info("mixagent decision at step %d (%s): %s", state.global_step, served or "last weights",
                 ", ".join(f"{n} {w:.3f}" for n, w in weights.items()))
        # beside the Trainer's own logs: trainer_state.json (and so every checkpoint) keeps the schedule
        state.log_history.append({"step": state.global_step,
                                  **{f"mixagent/weight/{n}": float(w) for n, w in weights.items()}})
        self._losses, self._scores = {}, {}

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Every checkpoint keeps the loader's state (a mixagent sampler or mixture), so that
        ``train(resume_from_checkpoint=...)`` resumes it exactly."""
        if isinstance(self.sampler, LiveWeightSampler | LiveMixture):
            write_checkpoint_state(self.sampler, args, state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        """Deliver the feedbacks still queued (at most :data:`FLUSH_S`)."""
        if self.run is not None and not self.run.flush(FLUSH_S):
            log.warning("MixagentCallback: feedbacks of run %s still queued after %.0f s (the service does not "
                        "answer); they are delivered if it answers while this process lives", self.run.run_id,
                        FLUSH_S)


class MixingTrainer(Trainer):
    """A ``Trainer`` that draws training examples through a given sampler (e.g. a
    :class:`LiveWeightSampler`) instead of its default random sampler, and whose evaluations report
    the field score's continuation log-likelihood. With a :class:`MixagentCallback` among its
    callbacks it checks at once that ``eval_dataset`` is keyed by the run's domain names."""

    def __init__(self, *args: Any, train_sampler: Any = None, context_fraction: float = CONTEXT_FRACTION,
                 **kwargs: Any):
        if kwargs.get("compute_metrics") is not None or kwargs.get("preprocess_logits_for_metrics") is not None:
            raise ValueError("MixingTrainer computes the field scores through compute_metrics and "
                             "preprocess_logits_for_metrics; compute other metrics in a callback")
        callback = next((c for c in kwargs.get("callbacks") or () if isinstance(c, MixagentCallback)), None)
        if callback is not None and callback.run is not None:
            _check_eval_dataset(kwargs.get("eval_dataset"), callback.run)
        kwargs.update(field_score_metrics(context_fraction))
        super().__init__(*args, **kwargs)
        self._mixing_sampler = train_sampler

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self._mixing_sampler is not None:
            return self._mixing_sampler
        return super()._get_train_sampler(train_dataset)


def _check_eval_dataset(eval_dataset: Any, run: MixingRun) -> None:
    names = list(run.space.names)
    if not isinstance(eval_dataset, dict):
        raise ValueError(f"eval_dataset: a {type(eval_dataset).__name__}; pass a dict of held-out datasets keyed by "
                         f"the run's domain names, {{name: dataset}} for {names}")
    missing, unknown = sorted(set(names) - set(eval_dataset)), sorted(set(eval_dataset) - set(names))
    if missing or unknown:
        raise ValueError(f"eval_dataset: keys must be the run's domain names {names}; missing {missing}, "
                         f"unknown {unknown}")
