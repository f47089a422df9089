"""The trainer-side hook: mixing methods that act *inside* a training interval.

Most methods choose a mixture before an interval from the run's feedback (a ``MixingPolicy``, which
the env takes as plain weights). Some need the model itself: TANDEM trains a twin copy beside it,
Aioli probes it with short runs. They cannot be served over HTTP (the service has feedback, not the
trainer's model); here they run inside the CPT backend through one hook,
:meth:`~mixagent.env.backend.CPTBackend.train_method`, which hands a :class:`TrainerSideMethod` an
:class:`IntervalTrainer` for one interval.

Accounting (the rule every trainer-side method obeys)
-----------------------------------------------------
The model under CPT takes exactly the interval's ``cpt.interval`` optimizer steps of
``cpt.batch_size × cpt.seq_len`` tokens, as under every other method, drawn from its own batch
stream (``backend.rng``) with the learning-rate schedule of the run. Those steps are taken only
through :meth:`IntervalTrainer.step` / :meth:`IntervalTrainer.train`: a step beyond the interval is
refused, and :func:`run_interval` refuses a method that returns with steps left. Steps the method
takes *with the model on the run's training mixture* (TANDEM's probe steps of the proxy ``u``) are
the model's own steps: they count towards the interval and are not overhead. Everything else (a
twin's steps, probe forward passes, copies) is the method's **overhead**, measured per decision in
CPU-seconds (``time.process_time``: every thread of the process) and wall seconds as the interval's
total minus the model's counted steps.

What a method may use (:class:`IntervalTrainer`)
------------------------------------------------
- the model (``model``), its optimizer's state through :meth:`IntervalTrainer.twin` (a deep copy
  with a copy of the optimizer state, trained by the same update rule and schedule);
- per-domain training batches (:meth:`IntervalTrainer.domain_batch`) from the backend's
  :class:`~mixagent.env.backend.TokenSampler`, i.e. the *training* split;
- a validation sample (:meth:`IntervalTrainer.validation_batch`) drawn from the *training split* of
  every field, never from the held-out evaluation windows: field f gets the run's objective weight
  ``c_f`` and its domains share it by their priors (``validation_probs``). It overlaps the data the
  model trains on (the held-out windows are the evaluation's alone);
- its own generator ``rng`` (``backend.method_rng``, seeded with the episode), so its draws never
  shift the model's batch stream.

The interval's *effective mixture*, the step-weighted mean of the mixtures the model's steps were
drawn by, is what the env records as the stage's weights (TANDEM changes its mixture mid-interval).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from mixagent.env.backend import lm_loss, make_optimizer, optimizer_step
from mixagent.trajectories.contract import ContractError, DomainSpace, Objective, Weights

if TYPE_CHECKING:
    from mixagent.env.backend import CPTBackend

__all__ = [
    "TrainerSideMethod",
    "IntervalTrainer",
    "IntervalReport",
    "Twin",
    "validation_probs",
    "run_interval",
]


@runtime_checkable
class TrainerSideMethod(Protocol):
    """A mixing method that acts inside the training interval, through the CPT backend's hook.

    ``check_interval(interval, space)`` refuses (ContractError naming both numbers) an interval the
    method cannot act in over ``space``, e.g. a probe budget larger than the interval; the harness
    calls it before any run. ``reset(space)`` starts an episode (the env calls it before the first interval).
    ``train_interval(trainer)`` runs one interval: it must take exactly ``trainer.steps`` steps of
    the model through ``trainer.step`` / ``trainer.train`` and returns its per-decision log
    (JSON-able, deterministic for a seed: e.g. the mixture before and after), which the record keeps.
    """

    @property
    def name(self) -> str:
        """A short name for logs and records."""

    @property
    def params(self) -> dict[str, Any]:
        """The method's parameters (JSON), as the trajectory header records them."""

    def check_interval(self, interval: int, space: DomainSpace) -> None: ...

    def reset(self, space: DomainSpace) -> None: ...

    def train_interval(self, trainer: IntervalTrainer) -> dict[str, Any]: ...


def validation_probs(space: DomainSpace, objective: Objective) -> np.ndarray:
    """Domain shares of the validation sample: field f gets the objective's weight ``c_f``
    (normalised; equal without field weights), split over its domains by their priors."""
    c = objective.weight_vector(space.fields)
    fm = space.field_matrix()  # [F, K] membership
    priors = space.priors()
    within = fm * priors / (fm @ priors)[:, None]  # each field's domains by prior, rows sum to 1
    return c @ within


class Twin:
    """A copy of the model and of its optimizer state at the moment it was made, trained by the
    model's own update rule (:func:`~mixagent.env.backend.optimizer_step`) at the run's learning
    rate for the step it stands at. Its steps are overhead, never the model's."""

    def __init__(self, backend: CPTBackend):
        self.model = copy.deepcopy(backend.model)
        self.optimizer = make_optimizer(self.model, backend.cpt)
        # deepcopy: load_state_dict keeps tensors that need no cast, and the twin must not update the
        # model's moments in place
        self.optimizer.load_state_dict(copy.deepcopy(backend.optimizer.state_dict()))
        self._backend = backend
        self.step_index = backend.step
        self.steps = 0

    def step(self, loss: torch.Tensor) -> None:
        """One optimizer step of the twin on ``loss`` (a graph through ``self.model``)."""
        optimizer_step(self.model, self.optimizer, loss, lr=self._backend.lr_at(self.step_index),
                       grad_clip=self._backend.cpt.grad_clip)
        self.step_index += 1
        self.steps += 1


@dataclass
class IntervalReport:
    """What one interval under a trainer-side method did."""

    weights: Weights
    """The effective mixture: the step-weighted mean of the mixtures the model's steps used."""
    train_loss: float
    """Mean training loss of the model's own steps."""
    steps: int
    """Optimizer steps of the model (always the interval)."""
    tokens: int
    """Tokens the model trained on (``steps × batch_size × seq_len``)."""
    log: dict[str, Any]
    """The method's own record of the decision (deterministic)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """``train_cpu_s``/``train_wall_s`` (the model's steps, what a plain interval costs) and
    ``overhead_cpu_s``/``overhead_wall_s`` (everything else the method did). Not deterministic."""


class IntervalTrainer:
    """One interval of the CPT backend, as a trainer-side method sees it (see the module docstring)."""

    def __init__(self, backend: CPTBackend, steps: int, objective: Objective, *, t: int, horizon: int):
        self.backend = backend
        self.model = backend.model
        self.space = backend.space
        self.cpt = backend.cpt
        self.steps = steps
        """The interval: exactly this many optimizer steps of the model."""
        self.t = t
        self.horizon = horizon
        self.objective = objective
        self.rng = backend.method_rng
        self.validation_probs = validation_probs(self.space, objective)
        self.taken = 0
        self._mixture_sum = np.zeros(self.space.size)
        self._loss_sum = torch.zeros(())
        self.train_cpu_s = 0.0
        self.train_wall_s = 0.0

    # ----- the model's own steps (counted) --------------------------------------------------------
    @property
    def remaining(self) -> int:
        return self.steps - self.taken

    def step(self, probs: np.ndarray) -> torch.Tensor:
        """One optimizer step of the model on a batch drawn by ``probs`` from its own stream; returns
        the batch (a method may reuse it, e.g. for its twin). Refused beyond the interval."""
        if self.taken >= self.steps:
            raise RuntimeError(f"trainer-side method: the interval has {self.steps} optimizer steps of the model; "
                               "a further step is refused (extra passes belong on a copy)")
        probs = Weights.from_raw(np.asarray(probs, dtype=np.float64)).as_array()
        c0, w0 = time.process_time(), time.perf_counter()
        batch = self.backend.sampler.sample(probs, self.cpt.batch_size, self.backend.rng)
        self._loss_sum += self.backend.train_step(batch)
        self.train_cpu_s += time.process_time() - c0
        self.train_wall_s += time.perf_counter() - w0
        self.taken += 1
        self._mixture_sum += probs
        return batch

    def train(self, probs: np.ndarray, steps: int) -> None:
        """``steps`` optimizer steps of the model on ``probs`` (a method's free steps)."""
        for _ in range(steps):
            self.step(probs)

    # ----- what the method's overhead may use ----------------------------------------------------
    def domain_batch(self, k: int, rows: int | None = None) -> torch.Tensor:
        """``rows`` (default ``cpt.batch_size``) training windows of domain ``k``, from the method's generator."""
        one_hot = np.zeros(self.space.size)
        one_hot[k] = 1.0
        return self.backend.sampler.sample(one_hot, rows or self.cpt.batch_size, self.rng)

    def validation_batch(self, rows: int | None = None) -> torch.Tensor:
        """``rows`` (default ``cpt.batch_size``) windows of the validation sample: the training split,
        domains drawn by :attr:`validation_probs` (the objective's field weights)."""
        return self.backend.sampler.sample(self.validation_probs, rows or self.cpt.batch_size, self.rng)

    def twin(self) -> Twin:
        """A copy of the model and its optimizer state now (TANDEM's reference ``w``)."""
        return Twin(self.backend)

    @staticmethod
    def loss(model: Any, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of ``model`` on ``batch``, with its graph (train mode)."""
        model.train()
        return lm_loss(model, batch)

    @staticmethod
    @torch.inference_mode()
    def row_losses(model: Any, batch: torch.Tensor) -> torch.Tensor:
        """Per-row mean next-token loss ``[B]`` of ``model`` on ``batch`` (no graph)."""
        model.eval()
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1), reduction="none")
        return nll.view(batch.size(0), -1).mean(dim=1)

    def domain_losses(self, model: Any, batches: list[torch.Tensor]) -> np.ndarray:
        """Mean loss of ``model`` on each domain's batch (``batches[k]`` for domain k)."""
        return np.array([float(self.row_losses(model, b).mean()) for b in batches])

    # ----- the interval's outcome ----------------------------------------------------------------
    def effective_mixture(self) -> Weights:
        return Weights.from_raw(self._mixture_sum / max(self.taken, 1))

    def mean_loss(self) -> float:
        return float(self._loss_sum) / max(self.taken, 1)


def run_interval(backend: CPTBackend, method: TrainerSideMethod, steps: int, objective: Objective, *,
                 t: int = 0, horizon: int = 1) -> IntervalReport:
    """Run one interval of ``method`` inside ``backend`` (the body of ``CPTBackend.train_method``):
    checks the interval, times the model's steps apart from the method's overhead, and refuses a
    method that leaves steps of the interval untaken."""
    method.check_interval(steps, backend.space)
    trainer = IntervalTrainer(backend, steps, objective, t=t, horizon=horizon)
    step0 = backend.step
    c0, w0 = time.process_time(), time.perf_counter()
    log = method.train_interval(trainer)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if trainer.taken != steps or backend.step - step0 != steps:
        raise ContractError(f"{method.name}: took {backend.step - step0} optimizer steps of the model in an interval "
                            f"of {steps} (cpt.interval); a trainer-side method takes exactly the interval's steps")
    return IntervalReport(
        weights=trainer.effective_mixture(),
        train_loss=trainer.mean_loss(),
        steps=steps,
        tokens=steps * backend.tokens_per_step,
        log=log,
        seconds={
            "train_cpu_s": trainer.train_cpu_s,
            "train_wall_s": trainer.train_wall_s,
            "overhead_cpu_s": max(cpu - trainer.train_cpu_s, 0.0),
            "overhead_wall_s": max(wall - trainer.train_wall_s, 0.0),
        },
    )
