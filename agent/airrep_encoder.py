"""The AirRep encoder, scaled to domains: a small projection over the model's own hidden states whose
group scores rank domain subsets by the measured drop of a field's held-out loss.

AirRep (Sun et al. 2025) embeds training examples ``x`` and a query ``q``, scores a group ``S`` as
``Σ_{x∈S} softmax_x(|⟨e_q,e_x⟩|)·⟨e_q,e_x⟩`` (attention pooling), and trains the encoder with a
RankNet loss so that these scores order subsets by the measured effect of training on them. Here:

- a *member* of a group is a **domain**: ``x_k`` = the mean over a document sample of domain k's
  training windows of the model's mean-pooled last hidden state (:func:`domain_features`);
- a *query* is a **field** (its held-out loss; ``q_f`` = the prior-weighted mean of its domains'
  ``x_k``) or, as extra training signal, a single **domain** (``q = x_k``, its own held-out loss),
  as AirRep trains on many dev examples;
- ``e_k = W_dᵀ·x̃_k`` and ``e_q = W_qᵀ·q̃`` with ``x̃ = (x − μ)/σ`` (the statistics of the training
  features), ``W_d, W_q`` of shape ``[hidden, dim]``: the whole encoder is ``2·hidden·dim`` numbers;
- ``influence[q, k] = ⟨e_q, e_k⟩``: the predicted effect of one interval on domain k on the query's
  loss; a subset's group score is AirRep's attention pooling of its members' influences;
- the loss is AirRep's ``ranknet_loss``: for every query and every ordered pair of training subsets
  with a larger measured drop first, a logistic loss on the score difference, weighted by the
  difference of the targets (clipped at 10), the targets being each query's drops standardised over
  the training subsets (AirRep's normalisation, clipped at ±10).

Inference is numpy (the projection), so the policy needs torch only for the model's forward pass.
The artifact is one JSON file (:meth:`AirRepEncoder.save`: the arrays and a card naming the model's
hidden and vocabulary sizes, the probes it was trained on and its held-out rank correlation); it
loads without unpickling anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.trajectories.contract import ContractError, DomainSpace

__all__ = [
    "AirRepEncoder",
    "TrainSpec",
    "window_features",
    "domain_features",
    "field_queries",
    "group_scores",
    "standardised_targets",
    "train_encoder",
    "spearman",
]


def window_features(model: Any, batch: Any) -> np.ndarray:
    """``[rows, hidden]``: the model's last hidden state of each window of ``batch`` (``[rows, L+1]``
    token ids), mean-pooled over positions (the language-model head is not run)."""
    import torch  # noqa: PLC0415 - only the forward pass needs torch

    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise ContractError(f"airrep: the model under CPT ({type(model).__name__}) exposes no base model with "
                            "hidden states (a transformers *ForCausalLM is expected)")
    model.eval()
    with torch.inference_mode():
        h = base(input_ids=batch[:, :-1], use_cache=False).last_hidden_state
        return np.asarray(h.float().mean(dim=1).cpu().numpy(), dtype=np.float64)


def domain_features(model: Any, batches: Sequence[Any]) -> np.ndarray:
    """``[K, hidden]``: per domain, the mean of :func:`window_features` over its windows ``batches[k]``."""
    return np.stack([window_features(model, b).mean(axis=0) for b in batches])


def field_queries(space: DomainSpace, x: np.ndarray) -> np.ndarray:
    """``[F, hidden]``: each field's query feature, the prior-weighted mean of its domains' ``x_k``."""
    fm = space.field_matrix() * space.priors()
    return np.asarray((fm / fm.sum(axis=1, keepdims=True)) @ x)


def group_scores(influence: np.ndarray, members: np.ndarray) -> np.ndarray:
    """AirRep's attention pooling: ``[n_subsets, n_queries]`` scores of the subsets ``members``
    (``[n_subsets, K]`` booleans) given ``influence`` ``[n_queries, K]``:
    ``Σ_{k∈S} softmax_{k∈S}(|I_qk|)·I_qk``."""
    logits = np.where(members[:, None, :], np.abs(influence)[None], -np.inf)
    attn = np.exp(logits - logits.max(axis=-1, keepdims=True))
    attn /= attn.sum(axis=-1, keepdims=True)
    return np.asarray((attn * influence[None]).sum(axis=-1))


def standardised_targets(drops: np.ndarray) -> np.ndarray:
    """Each query's drops ``[n_subsets, n_queries]`` standardised over the subsets, clipped at ±10 (AirRep)."""
    sd = drops.std(axis=0)
    return np.clip((drops - drops.mean(axis=0)) / np.where(sd > 0, sd, 1.0), -10, 10)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (0 where either side is constant)."""
    from scipy.stats import spearmanr  # noqa: PLC0415

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


@dataclass(frozen=True)
class AirRepEncoder:
    """The trained projection (module docstring); ``card`` says what it was trained on."""

    mean: np.ndarray
    """μ ``[hidden]``: the feature mean of the training sample."""
    scale: np.ndarray
    """σ ``[hidden]``: the feature standard deviation of the training sample (floored)."""
    w_query: np.ndarray
    """W_q ``[hidden, dim]``."""
    w_data: np.ndarray
    """W_d ``[hidden, dim]``."""
    card: dict[str, Any] = field(default_factory=dict)
    """``hidden_size``, ``vocab_size``, ``setting``, ``base_digest``, ``probes``, ``heldout_spearman``, …"""

    @property
    def hidden_size(self) -> int:
        return int(self.mean.size)

    def influence(self, queries: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``[n_queries, K]``: ``⟨e_q, e_k⟩`` for query features ``queries`` and domain features ``x``."""
        eq = ((queries - self.mean) / self.scale) @ self.w_query
        ed = ((x - self.mean) / self.scale) @ self.w_data
        return np.asarray(eq @ ed.T)

    def field_influence(self, space: DomainSpace, x: np.ndarray) -> np.ndarray:
        """``[F, K]``: each field's (query) influence of each domain, from the domain features ``x``."""
        return self.influence(field_queries(space, x), x)

    def check_model(self, model: Any, corpus_digest: str | None = None) -> None:
        """Refuse (naming both) a model whose hidden or vocabulary size is not the encoder's, or a run
        on another corpus (so another tokenizer) than the one the encoder was trained over."""
        config = getattr(model, "config", None)
        hidden = getattr(config, "hidden_size", None)
        vocab = getattr(config, "vocab_size", None)
        want = (self.hidden_size, self.card.get("vocab_size"))
        where = (f"airrep: the encoder ({self.card.get('path', 'given')}) was trained over "
                 f"{self.card.get('setting', 'a')} base model")
        fix = ("An encoder is tied to the base model it was trained over: collect probes and train one for this "
               "setting (python bench/airrep_probes.py --setting NAME)")
        if hidden != want[0] or (want[1] is not None and vocab != want[1]):
            raise ContractError(f"{where} (hidden size {want[0]}, vocabulary {want[1]}); the model under CPT has "
                                f"hidden size {hidden} and vocabulary {vocab}. {fix}")
        known = self.card.get("corpus_digest")
        if known is not None and corpus_digest is not None and known != corpus_digest:
            raise ContractError(f"{where} on corpus {known}; this run's corpus is {corpus_digest} (another corpus "
                                f"and tokenizer). {fix}")

    # ----- the artifact ------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.round(getattr(self, k), 8).tolist() for k in ("mean", "scale", "w_query", "w_data")}
        path.write_text(json.dumps({"format": "airrep-encoder-v1", "card": self.card, **arrays}) + "\n")

    @classmethod
    def load(cls, path: Path) -> AirRepEncoder:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ContractError(f"encoder: {path} is not a readable AirRep encoder ({e})") from None
        if not isinstance(raw, dict) or raw.get("format") != "airrep-encoder-v1":
            raise ContractError(f"encoder: {path} is not an AirRep encoder (format airrep-encoder-v1)")
        mean, scale = np.array(raw["mean"], dtype=np.float64), np.array(raw["scale"], dtype=np.float64)
        wq, wd = np.array(raw["w_query"], dtype=np.float64), np.array(raw["w_data"], dtype=np.float64)
        if not (mean.ndim == 1 and scale.shape == mean.shape and wq.ndim == 2 and wq.shape == wd.shape
                and wq.shape[0] == mean.size):
            raise ContractError(f"encoder: {path} has inconsistent shapes (mean {mean.shape}, scale {scale.shape}, "
                                f"w_query {wq.shape}, w_data {wd.shape})")
        return cls(mean, scale, wq, wd, {**raw.get("card", {}), "path": str(path)})


@dataclass(frozen=True)
class TrainSpec:
    """How the projection is trained (fixed before any held-out number is looked at)."""

    dim: int = 16
    """Embedding size of the projection."""
    epochs: int = 400
    """Full-batch Adam steps over all pairs."""
    lr: float = 0.01
    weight_decay: float = 0.001
    domain_queries: bool = True
    """Also train on each domain's own held-out loss as a query (AirRep trains on many dev examples)."""
    seed: int = 0


def train_encoder(space: DomainSpace, x: np.ndarray, sample: np.ndarray, members: np.ndarray,
                  field_drop: np.ndarray, domain_drop: np.ndarray | None, spec: TrainSpec,
                  card: dict[str, Any] | None = None) -> tuple[AirRepEncoder, list[float]]:
    """Fit ``W_q, W_d`` with AirRep's RankNet loss on training subsets.

    ``x`` ``[K, hidden]``: the domain features; ``sample`` ``[N, hidden]``: the per-window features
    the standardisation statistics come from; ``members`` ``[n, K]`` booleans; ``field_drop`` ``[n, F]``
    and ``domain_drop`` ``[n, K]`` the measured drops. Returns the encoder and the loss curve."""
    import torch  # noqa: PLC0415 - training only

    mean = sample.mean(axis=0)
    scale = np.maximum(sample.std(axis=0), 1e-6)
    queries = field_queries(space, x)
    drops = field_drop
    if spec.domain_queries and domain_drop is not None:
        queries = np.concatenate([queries, x])
        drops = np.concatenate([field_drop, domain_drop], axis=1)
    target = torch.tensor(standardised_targets(drops).T, dtype=torch.float64)  # [Q, n]
    diff = target[:, :, None] - target[:, None, :]  # [Q, n, n]: pair (i, j), i better when > 0
    mask = diff > 0
    weight = diff.clamp(max=10.0)[mask]
    g = torch.Generator().manual_seed(spec.seed)
    hidden = x.shape[1]
    wq = (torch.randn(hidden, spec.dim, generator=g, dtype=torch.float64) / hidden ** 0.5).requires_grad_()
    wd = (torch.randn(hidden, spec.dim, generator=g, dtype=torch.float64) / hidden ** 0.5).requires_grad_()
    q_t = torch.tensor((queries - mean) / scale)
    x_t = torch.tensor((x - mean) / scale)
    m_t = torch.tensor(members)
    opt = torch.optim.Adam([wq, wd], lr=spec.lr, weight_decay=spec.weight_decay)
    curve = []
    for _ in range(spec.epochs):
        infl = (q_t @ wq) @ (x_t @ wd).T  # [Q, K]
        logits = torch.where(m_t[:, None, :], infl.abs()[None], torch.tensor(-torch.inf, dtype=torch.float64))
        score = (torch.softmax(logits, dim=-1) * infl[None]).sum(-1).T  # [Q, n]
        pred = (score[:, :, None] - score[:, None, :])[mask]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), weight=weight)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        opt.step()
        curve.append(float(loss.detach()))
    enc = AirRepEncoder(mean, scale, wq.detach().numpy().copy(), wd.detach().numpy().copy(),
                        {"hidden_size": hidden, "dim": spec.dim, **(card or {})})
    return enc, curve
