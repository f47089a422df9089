"""Attribution-guided weighting (AirRep's idea, scaled to domains), a trainer-side method.

At each decision (one interval of ``I = cpt.interval`` optimizer steps), through the CPT backend's
hook (``env/trainer_side.py``):

1. draw ``rows`` training windows of every domain (the method's own generator) and run the *current*
   model over them: ``x_k`` = domain k's mean-pooled last hidden state (``agent/airrep_encoder.py``);
2. the trained encoder gives each field's influence of each domain, ``A[f, k] = ⟨e_f, e_k⟩`` (the
   predicted drop of field f's held-out loss after training on domain k), and the objective-weighted
   influence ``I_k = Σ_f c_f·A[f, k]`` with ``c`` the run's field weights (normalised);
3. ``α_k ∝ prior_k · exp(β · z(I_k))``, ``z`` the standardisation across domains (``z = 0`` when
   every ``I_k`` is equal), floored to the contract's ``WEIGHT_FLOOR``;
4. all ``I`` steps of the model on α.

The rule has no memory: α is recomputed from the current model at every decision (the influences
move as the model does). λ, the spread penalty, does not enter: the hook hands a method the
objective's field weights, not the run's gains (as for Aioli, whose objective is the total loss).

Accounting. The model takes exactly the interval's steps, all on α; the overhead is ``K × rows``
forward passes without the language-model head plus the projection (numpy), measured per decision
in CPU-seconds (``bench/trainer_side_overhead.py --methods airrep``).

| parameter | default | meaning |
|---|---|---|
| `beta`    | 1.0     | β: the log-ratio of two domains' shares per standard deviation of influence |
| `rows`    | 8       | training windows per domain scored per decision (its probe budget, in windows) |
| `encoder` | the bundled ``agent/artifacts/airrep-math-tiny/encoder.json`` | path of an encoder artifact |

Refusals. A probe budget ``K × rows`` larger than the interval's ``I × batch_size`` training windows
is refused, naming both numbers. An encoder is tied to the base model it was trained over: a model
of another hidden or vocabulary size, or a run on another corpus (so another tokenizer; the card's
``corpus_digest``), is refused before the first step, naming both; a new setting needs its own
probes and encoder (``python bench/airrep_probes.py --setting NAME``). The HTTP service cannot serve
it (it sees feedback, not the model): ``agent/registry.py`` ``TRAINER_SIDE_METHODS``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mixagent.agent.airrep_encoder import AirRepEncoder, domain_features
from mixagent.agent.tandem import _positive
from mixagent.trajectories.contract import ContractError, DomainSpace, Weights

if TYPE_CHECKING:  # the hook's module imports torch; a driver that only plans needs none
    from mixagent.env.trainer_side import IntervalTrainer

__all__ = ["AirRepMethod", "airrep_weights", "bundled_encoder_path", "standardise"]


def bundled_encoder_path() -> Path:
    """The encoder shipped with the package: trained on math-tiny's base model (package data)."""
    return Path(str(importlib.resources.files("mixagent.agent"))) / "artifacts" / "airrep-math-tiny" / "encoder.json"


def standardise(v: np.ndarray) -> np.ndarray:
    """``z(v) = (v − mean)/std`` across entries (population std); zeros when ``v`` is constant."""
    sd = float(v.std())
    return np.zeros_like(v) if sd <= 1e-12 * max(1.0, float(np.abs(v).max())) else (v - v.mean()) / sd


def airrep_weights(prior: np.ndarray, influence: np.ndarray, beta: float) -> np.ndarray:
    """``α ∝ prior · exp(β · z(influence))`` (computed in log space)."""
    logits = np.log(prior) + beta * standardise(influence)
    w = np.exp(logits - logits.max())
    return np.asarray(w / w.sum())


def _count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ContractError(f"{name}: must be an integer >= 1, got {value!r}")
    return value


class AirRepMethod:
    """Attribution-guided weighting: ``α_k ∝ prior_k·exp(β·z(I_k))`` with ``I_k`` the objective-weighted
    influence of domain k from a trained AirRep encoder over the current model's hidden states
    (module docstring)."""

    name = "airrep"

    def __init__(self, beta: float = 1.0, rows: int = 8, encoder: str | None = None):
        if encoder is not None and not isinstance(encoder, str):
            raise ContractError(f"encoder: must be a path (string) or null for the bundled one, got {encoder!r}")
        self.beta = _positive("beta", beta, zero_ok=True)
        self.rows = _count("rows", rows)
        self.encoder_path = encoder
        self._encoder: AirRepEncoder | None = None
        self._space: DomainSpace | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {"beta": self.beta, "rows": self.rows, "encoder": self.encoder_path}

    @property
    def encoder(self) -> AirRepEncoder:
        """The encoder (read on first use, so that building the method for a plan costs nothing)."""
        if self._encoder is None:
            self._encoder = AirRepEncoder.load(Path(self.encoder_path) if self.encoder_path
                                               else bundled_encoder_path())
        return self._encoder

    def check_interval(self, interval: int, space: DomainSpace, batch_size: int | None = None) -> None:
        """Refuse a probe budget of ``K × rows`` windows larger than the interval's ``interval ×
        batch_size`` training windows, naming both. The harness calls this with the interval and the
        space only (it cannot see the batch size): then nothing is checked here, and the hook checks
        the exact numbers at the first decision, before any step of the model."""
        if batch_size is None:
            return
        budget = space.size * self.rows
        if budget > interval * batch_size:
            raise ContractError(f"rows: a probe budget of {space.size} domains × {self.rows} windows = {budget} "
                                f"windows is larger than the interval of {interval} steps × {batch_size} windows "
                                f"= {interval * batch_size} training windows (cpt.interval × cpt.batch_size)")

    def reset(self, space: DomainSpace) -> None:
        self._space = space

    def influences(self, trainer: IntervalTrainer) -> np.ndarray:
        """``A[f, k]`` from the current model (steps 1–2 of the module docstring)."""
        enc = self.encoder
        enc.check_model(trainer.model, trainer.backend.provenance()["corpus"])
        batches = [trainer.domain_batch(k, self.rows) for k in range(trainer.space.size)]
        return enc.field_influence(trainer.space, domain_features(trainer.model, batches))

    def train_interval(self, trainer: IntervalTrainer) -> dict[str, Any]:
        if self._space is None or self._space.size != trainer.space.size:
            raise RuntimeError("airrep: reset(space) must start the episode before an interval")
        self.check_interval(trainer.steps, trainer.space, trainer.cpt.batch_size)
        # ALGO LOGIC: influences from the current model, objective-weighted, then one mixture for the interval
        a = self.influences(trainer)
        c = trainer.objective.weight_vector(trainer.space.fields)
        infl = c @ a
        alpha = Weights.from_raw(airrep_weights(trainer.space.priors(), infl, self.beta)).as_array()
        trainer.train(alpha, trainer.steps)
        return {"field_influence": a.tolist(), "influence": infl.tolist(), "field_weights": c.tolist(),
                "alpha": alpha.tolist(), "rows": self.rows}
