"""The continual pre-training backend: train a causal LM for ``interval`` optimizer steps on batches
drawn by the current domain weights, then evaluate it on fixed held-out windows.

Reads like nanoGPT's ``train.py``: a pure ``get_lr(step)``, AdamW with gradient clipping, and an
``evaluate()`` that averages a fixed set of held-out batches under ``inference_mode``.

The model computes on the CPU unless :meth:`CPTBackend.place` moves it (``runtime.device``): then the
model, its base state, the evaluation windows and each drawn batch live on the GPU, optionally under
bf16 autocast, while the sampler still draws with numpy on the host and results come back as floats.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from mixagent.env.data import DomainTokens
from mixagent.env.provenance import fingerprint
from mixagent.env.setting import CPTSpec, EvalSpec, RuntimeSpec, SettingError
from mixagent.trajectories.contract import DomainSpace, Feedback, Objective

if TYPE_CHECKING:
    from mixagent.env.trainer_side import IntervalReport, TrainerSideMethod

__all__ = ["get_lr", "make_optimizer", "lm_loss", "optimizer_step", "resolve_device", "TokenSampler", "EvalSet",
           "CPTBackend"]

METHOD_STREAM = 0x6D6574686F64
"""Salt of a trainer-side method's own generator (``CPTBackend.method_rng``): seeded with the episode's
seed but apart from the model's batch stream, so a method's probes never shift the batches the model
trains on (two methods run with one seed draw the same model batches for the same mixtures)."""


def resolve_device(runtime: RuntimeSpec) -> torch.device:
    """The device ``runtime.device`` names here: ``auto`` is cuda when ``torch.cuda.is_available()``;
    ``cuda`` without a GPU, or bf16 autocast that resolves to the CPU, is a :class:`SettingError`."""
    if runtime.device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if runtime.device == "cuda":
        raise SettingError(f"runtime.device: 'cuda', but torch.cuda.is_available() is False on this machine "
                           f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use 'cpu' or 'auto'")
    if runtime.autocast != "none":
        raise SettingError(f"runtime.autocast: {runtime.autocast!r} needs CUDA, but runtime.device 'auto' resolves "
                           "to cpu here (torch.cuda.is_available() is False)")
    return torch.device("cpu")


def get_lr(step: int, *, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio·lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if step >= total:
        return lr * min_ratio
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: Any, cpt: CPTSpec) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms and biases), as in nanoGPT."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in {id(p): p for p in model.parameters()}.values():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cpt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cpt.lr,
        betas=(cpt.beta1, cpt.beta2),
    )


def lm_loss(model: Any, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on ``batch`` ``[B, L+1]`` (with its graph)."""
    logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))


def optimizer_step(model: Any, optimizer: torch.optim.Optimizer, loss: torch.Tensor, *, lr: float,
                   grad_clip: float) -> None:
    """Back-propagate ``loss``, clip the gradient norm, one optimizer step at ``lr``, clear the grads:
    the one update rule of the model under CPT and of any copy a trainer-side method trains beside it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class TokenSampler:
    """Draws ``[batch, seq_len+1]`` windows: each row's domain ~ Categorical(weights), its start
    uniform within that domain's train tokens. One gather over a concatenated array: cheap."""

    def __init__(self, arrays: list[np.ndarray], seq_len: int, names: list[str] | None = None,
                 device: torch.device | None = None):
        self.seq_len = seq_len
        self.device = device
        """Where drawn batches go (None: stay on the host, as on the CPU)."""
        names = names or [str(i) for i in range(len(arrays))]
        too_short = [n for n, a in zip(names, arrays, strict=True) if a.size < seq_len + 1]
        if too_short:
            raise ValueError(f"domains {too_short} have fewer than cpt.seq_len+1={seq_len + 1} train tokens")
        self.tokens = np.concatenate(arrays).astype(np.int64)
        self.offsets = np.cumsum([0] + [a.size for a in arrays[:-1]])
        self.spans = np.array([a.size - seq_len for a in arrays])  # number of valid window starts
        self._ar = np.arange(seq_len + 1)

    def sample(self, probs: np.ndarray, batch: int, rng: np.random.Generator) -> torch.Tensor:
        # Weights are validated to sum to 1 within 1e-6; numpy's sampler wants ~1e-8.
        doms = rng.choice(len(self.spans), size=batch, p=probs / probs.sum())
        starts = self.offsets[doms] + (rng.random(batch) * self.spans[doms]).astype(np.int64)
        rows = torch.from_numpy(self.tokens[starts[:, None] + self._ar])
        return rows if self.device is None else rows.to(self.device)


@dataclass
class EvalSet:
    """Fixed held-out windows: evenly spaced in each domain's held-out tokens, no randomness, so
    scores are comparable across steps, episodes and runs of one setting."""

    windows: torch.Tensor  # [K*n, seq_len+1]
    domain_of_row: np.ndarray  # [K*n]
    n_domains: int

    @classmethod
    def build(cls, arrays: list[np.ndarray], names: list[str], n: int, seq_len: int) -> EvalSet:
        rows, doms = [], []
        for k, (a, name) in enumerate(zip(arrays, names, strict=True)):
            if a.size < n * (seq_len + 1):
                raise ValueError(
                    f"domain {name}: {a.size} held-out tokens, evaluation needs "
                    f"eval.windows_per_domain×(seq_len+1) = {n * (seq_len + 1)}"
                )
            starts = np.linspace(0, a.size - seq_len - 1, n).astype(np.int64)
            rows.append(a[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
            doms += [k] * n
        return cls(torch.from_numpy(np.concatenate(rows)), np.array(doms), len(arrays))


class CPTBackend:
    """One model under continual pre-training, restartable from an in-memory base state.

    Two ways to train an interval: :meth:`train` (a mixture chosen before the interval, every policy)
    and :meth:`train_method`, the hook for *trainer-side* methods that act inside the interval
    (TANDEM's twin model, Aioli's probes; ``env/trainer_side.py``). Either way the model takes
    exactly the interval's optimizer steps and tokens; a method's extra passes are its overhead.

    It starts on the CPU; :meth:`place` moves it to ``runtime.device`` (the env does, from its setting).
    """

    def __init__(
        self,
        model: Any,
        data: DomainTokens,
        space: DomainSpace,
        cpt: CPTSpec,
        evaluation: EvalSpec,
        total_steps: int,
    ):
        if cpt.threads:
            torch.set_num_threads(cpt.threads)
        self.model = model
        self.space = space
        self.cpt = cpt
        self.evaluation = evaluation
        self.total_steps = total_steps
        names = list(space.names)
        self.sampler = TokenSampler([data.train[n] for n in names], cpt.seq_len, names)
        self.eval_set = EvalSet.build(
            [data.heldout[n] for n in names], names, evaluation.windows_per_domain, cpt.seq_len
        )
        self.context_len = round(evaluation.context_fraction * cpt.seq_len)
        self._field_matrix = space.field_matrix()
        self._base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._data_manifest = data.manifest
        self._provenance: dict[str, str] | None = None
        self.rng = np.random.default_rng(0)
        self.method_rng = np.random.default_rng([0, METHOD_STREAM])
        self.step = 0
        self.optimizer = self._new_optimizer()
        self.device = torch.device("cpu")
        self.autocast = "none"
        """``bf16``: forward passes under bfloat16 autocast (CUDA only); ``none``: float32."""

    def place(self, runtime: RuntimeSpec) -> torch.device:
        """Move the model, its base state and the evaluation windows to ``runtime.device`` (resolved by
        :func:`resolve_device`) and send drawn batches there; a fresh optimizer follows the weights.
        On the CPU nothing moves and nothing changes. Returns the device."""
        device = resolve_device(runtime)
        self.autocast = runtime.autocast if device.type == "cuda" else "none"
        if device != self.device:
            self.model.to(device)
            self._base_state = {k: v.to(device) for k, v in self._base_state.items()}
            self.eval_set.windows = self.eval_set.windows.to(device)
            self.sampler.device = None if device.type == "cpu" else device
            self.optimizer = self._new_optimizer()
            self.device = device
        self._provenance = None
        return device

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ----- state ---------------------------------------------------------------------------------
    def _new_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.model, self.cpt)

    def reset(self, seed: int) -> None:
        """Restore the base weights from memory, a fresh optimizer, step 0, and a seeded sampler (and
        a trainer-side method's own generator, :data:`METHOD_STREAM`)."""
        self.model.load_state_dict(self._base_state)
        self.optimizer = self._new_optimizer()
        self.step = 0
        self.rng = np.random.default_rng(seed)
        self.method_rng = np.random.default_rng([seed, METHOD_STREAM])
        torch.manual_seed(seed)  # global, as torch's RNG is; models here have no dropout anyway

    def set_base_state(self) -> None:
        """Make the model's current weights the state that :meth:`reset` restores."""
        self._base_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._provenance = None

    def provenance(self) -> dict[str, str]:
        """Digests of the corpus and base weights, and the numerics, that episodes here run on."""
        if self._provenance is None:
            self._provenance = fingerprint(self._data_manifest, self._base_state, self.device, self.autocast)
        return dict(self._provenance)

    @property
    def tokens_per_step(self) -> int:
        return self.cpt.batch_size * self.cpt.seq_len

    # ----- training ------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        return get_lr(
            step, lr=self.cpt.lr, warmup=self.cpt.warmup_steps, total=self.total_steps, min_ratio=self.cpt.min_lr_ratio
        )

    def train_step(self, batch: torch.Tensor) -> torch.Tensor:
        """One optimizer step on ``batch`` ``[B, L+1]``; returns the (detached) loss, on the host."""
        loss = self._step(batch)
        return loss if self.device.type == "cpu" else loss.cpu()

    def _step(self, batch: torch.Tensor) -> torch.Tensor:
        """:meth:`train_step` with the loss left on the model's device (no host sync per step)."""
        self.model.train()
        with self._autocast():
            loss = lm_loss(self.model, batch)
        optimizer_step(self.model, self.optimizer, loss, lr=self.lr_at(self.step), grad_clip=self.cpt.grad_clip)
        self.step += 1
        return loss.detach()

    def train(self, probs: np.ndarray, steps: int) -> float:
        """``steps`` optimizer steps on batches drawn by ``probs``; returns the mean training loss."""
        total = torch.zeros((), device=self.device)
        for _ in range(steps):
            total += self._step(self.sampler.sample(probs, self.cpt.batch_size, self.rng))
        return float(total) / max(steps, 1)

    def train_method(self, method: TrainerSideMethod, steps: int, objective: Objective, *, t: int = 0,
                     horizon: int = 1) -> IntervalReport:
        """The trainer-side hook: ``method`` runs interval ``t`` of ``horizon`` inside the trainer and
        must take exactly ``steps`` optimizer steps of the model through the
        :class:`~mixagent.env.trainer_side.IntervalTrainer` it is given (which refuses more, and
        this call refuses fewer). Its validation sample comes from the training split, weighted by
        ``objective``. Returns the interval's effective mixture, training loss, its own log and the
        CPU/wall seconds of the model's steps and of the method's overhead
        (:func:`mixagent.env.trainer_side.run_interval`)."""
        from mixagent.env.trainer_side import run_interval  # noqa: PLC0415 - the hook's module imports this one

        with self._autocast():  # the method's own passes (twin, probes) compute as the model's do
            return run_interval(self, method, steps, objective, t=t, horizon=horizon)

    # ----- evaluation ----------------------------------------------------------------------------
    @torch.inference_mode()
    def token_nll(self) -> torch.Tensor:
        """Per-token negative log-likelihood ``[rows, seq_len]`` of every evaluation window."""
        model = self.model
        model.eval()
        out = []
        for chunk in self.eval_set.windows.split(self.evaluation.batch_size):  # type: ignore[no-untyped-call]  # torch: Tensor.split unannotated
            with self._autocast():
                logits = model(input_ids=chunk[:, :-1], use_cache=False).logits
            nll = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), chunk[:, 1:].reshape(-1), reduction="none"
            )
            out.append(nll.view(chunk.size(0), -1))
        return torch.cat(out)

    def evaluate(self) -> Feedback:
        """Per-domain held-out loss, and per-field mean log-likelihood of held-out continuations,
        averaged over the field's domains with equal weight.

        A window has ``seq_len + 1`` tokens and ``seq_len`` next-token predictions. With
        ``c = round(context_fraction·seq_len)``, the continuation is the last ``seq_len - c``
        predictions: tokens ``c+1 … seq_len`` of the window, each given everything before it (at
        least the first ``c+1`` tokens)."""
        return self.feedback_from_nll(self.token_nll())

    def feedback_from_nll(self, token_nll: torch.Tensor) -> Feedback:
        """Reduce per-token NLL of the evaluation windows to :class:`Feedback` at the current step."""
        nll = token_nll.cpu().numpy().astype(np.float64)
        k = self.eval_set.n_domains
        rows = self.eval_set.domain_of_row
        domain_loss = np.array([nll[rows == d].mean() for d in range(k)])
        cont_ll = np.array([-nll[rows == d, self.context_len :].mean() for d in range(k)])
        fm = self._field_matrix
        field_scores = (fm @ cont_ll) / fm.sum(axis=1)
        return Feedback(
            step=self.step,
            tokens_seen=self.step * self.tokens_per_step,
            field_scores=dict(zip(self.space.fields, field_scores.tolist(), strict=True)),
            domain_losses=dict(zip(self.space.names, domain_loss.tolist(), strict=True)),
        )
