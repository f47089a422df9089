"""The domain-level agent: one network for any domain space, trained by behaviour cloning in torch.

    mixagent agent train --level domain --data data/trajectories/math-tiny --data data/trajectories/math-tiny-static \\
        --data data/trajectories/math-tiny-domain --data data/trajectories/code-tiny --out runs/policies/domain

The network reads one token per domain (``dom-v1``, :mod:`mixagent.trajectories.tokens`) and one run
token, and returns one logit per domain; the mixture is ``(1-ε)·softmax(z) + ε·prior``. Every token
goes through the same layers and attention has no positions, so permuting the domains permutes the
logits: one artifact serves 2, 12 or 40 domains without retraining.

Why plain torch and not d3rlpy: d3rlpy's policy heads are ``nn.Linear(hidden, action_size)`` over a
fixed action size, which cannot be equivariant nor change size; behaviour cloning needs no more than
a cross-entropy loss, so it is written here (:func:`train_set_policy`). The conservative-Q stage of
issue 21 would need a critic of the same shape.

Data. Field-level and domain-level records train together: a field-level record's mixtures are
domain weights too (spread by priors). As for the field-level agent, the records are split by
trajectory into train and validation first; then, per setting and per objective drawn from the
card's range, the best ``bc_top_fraction`` of the *smooth* training records by final balanced score
are imitated (smooth: the mean total-variation change of the mixture between stages is at most
``bc_max_roughness``; a fresh random mixture per stage carries nothing to copy). Every decision of a
selected record is one example: the tokens before it and the mixture chosen.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mixagent.agent.card import CARD_FILE, PolicyCard
from mixagent.agent.dataset import DatasetError, TrainingRun, final_score, load_runs, split_runs
from mixagent.agent.errors import ExportError
from mixagent.agent.train import TrainConfig, TrainReport, refuse_evaluation_settings
from mixagent.trajectories.contract import MAX_DOMAINS, ActionSpec, Objective, ObjectiveRange, stable_hash
from mixagent.trajectories.replay import history_prefix
from mixagent.trajectories.tokens import (
    DOMAIN_FEATURES,
    OWN_MIXTURE_FEATURES,
    RUN_FEATURES,
    TOKEN_ENCODER_VERSION,
    encode_tokens,
)

__all__ = ["DomainSetNet", "MixtureNet", "SetExamples", "set_examples", "mixture_roughness", "train_set_policy",
           "EXPORT_ATOL", "CLAMP_BAND"]

CLAMP_BAND = 1.0
"""The guard's clamp band of a domain-set card (:attr:`PolicyCard.clamp_band`): a token or run
feature up to one training-range width outside its range is clamped and served. The card exists to
serve domain spaces that no training run had, whose runs may learn faster or forget more than any
training run did; one range width is a round, generous choice (not fitted to any setting) that
still sends a gross excursion to the fallback."""



class _Block(nn.Module):
    """Pre-norm self-attention over the domain tokens (masked keys for padding), then an MLP."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.width, self.head_dim = heads, d, d // heads
        self.scale = 1.0 / math.sqrt(d // heads)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, h: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, k = h.shape[0], h.shape[1]
        q, kk, v = self.qkv(self.norm1(h)).chunk(3, dim=2)
        q = q.reshape(b, k, self.heads, self.head_dim).transpose(1, 2)
        kk = kk.reshape(b, k, self.heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, k, self.heads, self.head_dim).transpose(1, 2)
        att = (q @ kk.transpose(-2, -1)) * self.scale + key_bias[:, None, None, :]
        out = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, k, self.width)
        h = h + self.proj(out)
        return h + self.mlp(self.norm2(h))


class DomainSetNet(nn.Module):
    """Tokens ``[B, K, D]``, run features ``[B, R]`` and a validity mask ``[B, K]`` (1 = a domain,
    0 = padding) -> logits ``[B, K]`` (padding at -1e9). Feature scalers are buffers, so the exported
    network takes raw ``dom-v1`` features."""

    tok_mean: torch.Tensor
    tok_std: torch.Tensor
    run_mean: torch.Tensor
    run_std: torch.Tensor

    def __init__(self, n_token: int, n_run: int, width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.register_buffer("tok_mean", torch.zeros(n_token))
        self.register_buffer("tok_std", torch.ones(n_token))
        self.register_buffer("run_mean", torch.zeros(n_run))
        self.register_buffer("run_std", torch.ones(n_run))
        self.embed = nn.Sequential(nn.Linear(n_token + n_run, width), nn.GELU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)

    def forward(self, tokens: torch.Tensor, run: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = (tokens - self.tok_mean) / self.tok_std
        r = ((run - self.run_mean) / self.run_std)[:, None, :].expand(-1, x.shape[1], -1)
        h = self.embed(torch.cat([x, r], dim=2))
        key_bias = (mask - 1.0) * 1e9
        for block in self.blocks:
            h = block(h, key_bias)
        return self.head(self.norm(h)).squeeze(-1) + key_bias


@dataclass
class SetExamples:
    """Decisions to imitate: per example the domain tokens, run features, the mixture chosen and the
    domains' priors (variable K, so lists)."""

    tokens: list[np.ndarray]
    runs: list[np.ndarray]
    targets: list[np.ndarray]
    priors: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, idx: Sequence[int]) -> tuple[torch.Tensor, ...]:
        k = max(self.tokens[i].shape[0] for i in idx)
        d = self.tokens[idx[0]].shape[1]
        tok = np.zeros((len(idx), k, d), np.float32)
        mask = np.zeros((len(idx), k), np.float32)
        tgt = np.zeros((len(idx), k), np.float32)
        pri = np.zeros((len(idx), k), np.float32)
        for row, i in enumerate(idx):
            n = self.tokens[i].shape[0]
            tok[row, :n], mask[row, :n] = self.tokens[i], 1.0
            tgt[row, :n], pri[row, :n] = self.targets[i], self.priors[i]
        run = np.stack([self.runs[i] for i in idx])
        return (torch.from_numpy(tok), torch.from_numpy(run), torch.from_numpy(mask), torch.from_numpy(tgt),
                torch.from_numpy(pri))


def mixture_roughness(run: TrainingRun) -> float:
    """Mean total-variation change of the mixture between consecutive stages (0 for a constant)."""
    w = run.trajectory.history.weight_matrix()
    return float(0.5 * np.abs(np.diff(w, axis=0)).sum(axis=1).mean()) if len(w) > 1 else 0.0


def _examples_of(run: TrainingRun, objective: Objective, out: SetExamples) -> None:
    hd, h = run.trajectory.header, run.trajectory.history
    prior = hd.space.priors()
    for t, w in enumerate(h.weights):
        tok, feats = encode_tokens(history_prefix(h, t), hd.horizon, objective)
        out.tokens.append(tok)
        out.runs.append(feats)
        out.targets.append(w.as_array().astype(np.float32))
        out.priors.append(prior.astype(np.float32))


def set_examples(runs: Sequence[TrainingRun], draws: int, top_fraction: float, objective_range: ObjectiveRange,
                 rng: np.random.Generator, max_roughness: float = math.inf) -> SetExamples:
    """Per setting, ``draws`` objectives; under each, the best ``top_fraction`` of the setting's smooth
    runs by final balanced score (at least one), every decision of each an example."""
    out = SetExamples([], [], [], [])
    by_setting: dict[str, list[TrainingRun]] = {}
    for r in runs:
        if mixture_roughness(r) <= max_roughness:
            by_setting.setdefault(r.setting_hash, []).append(r)
    for pool in by_setting.values():
        fields = pool[0].trajectory.header.space.fields
        for _ in range(draws):
            objective = objective_range.sample(rng, fields)
            ranked = sorted(pool, key=lambda r: final_score(r, objective), reverse=True)
            for r in ranked[:max(1, round(top_fraction * len(ranked)))]:
                _examples_of(r, objective, out)
    if not out.tokens:
        raise DatasetError("--data: no run is smooth enough to imitate (bc_max_roughness)")
    return out


class MixtureNet(nn.Module):
    """The served network: ``(tokens, run, mask, prior) -> (1-ε)·softmax(z) + ε·prior``, the one
    definition of the domain-level mixture (the ONNX graph computes it, the service only runs it)."""

    def __init__(self, net: DomainSetNet, epsilon: float):
        super().__init__()
        self.net = net
        self.epsilon = epsilon

    def forward(self, tokens: torch.Tensor, run: torch.Tensor, mask: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        return (1 - self.epsilon) * torch.softmax(self.net(tokens, run, mask), dim=-1) + self.epsilon * prior


HISTORY_FEATURES: tuple[int, ...] = tuple(DOMAIN_FEATURES.index(f) for f in OWN_MIXTURE_FEATURES)
"""The token columns of the policy's own past mixtures (``bc_history_noise`` perturbs them)."""


def _cross_entropy(model: MixtureNet, ex: SetExamples, idx: Sequence[int], history_noise: float = 0.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    tok, run, mask, tgt, pri = ex.batch(idx)
    if history_noise > 0:
        cols = list(HISTORY_FEATURES)
        noise = torch.randn((*tok.shape[:2], len(cols)), generator=generator) * history_noise
        tok[:, :, cols] += noise * mask[:, :, None]
    w = model(tok, run, mask, pri)
    return -(tgt * torch.log(w + 1e-12)).sum(dim=1).mean()


def _fit_scalers(net: DomainSetNet, ex: SetExamples) -> None:
    tok = np.concatenate(ex.tokens)
    run = np.stack(ex.runs)
    net.tok_mean.copy_(torch.from_numpy(tok.mean(axis=0)))
    net.tok_std.copy_(torch.from_numpy(np.maximum(tok.std(axis=0), 1e-3)))
    net.run_mean.copy_(torch.from_numpy(run.mean(axis=0)))
    net.run_std.copy_(torch.from_numpy(np.maximum(run.std(axis=0), 1e-3)))


def _ranges(ex: SetExamples, objectives: ObjectiveRange) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per token feature and per run feature, the range seen in training, with the objective's
    features widened to the whole trained objective range."""
    tok = np.concatenate(ex.tokens)
    run = np.stack(ex.runs)
    tlo, thi = tok.min(axis=0).astype(float), tok.max(axis=0).astype(float)
    rlo, rhi = run.min(axis=0).astype(float), run.max(axis=0).astype(float)
    r = objectives.max_weight_ratio
    i = DOMAIN_FEATURES.index("field_weight")
    tlo[i], thi[i] = min(tlo[i], 1 / r), max(thi[i], r)
    j = RUN_FEATURES.index("spread_penalty")
    rlo[j], rhi[j] = objectives.spread_penalty_min, objectives.spread_penalty_max
    return [float(x) for x in tlo], [float(x) for x in thi], [float(x) for x in rlo], [float(x) for x in rhi]


EXPORT_ATOL = 1e-5
"""The largest difference in a share between the ONNX graph and torch that an export accepts."""


def export_set_onnx(model: MixtureNet, path: Path, ex: SetExamples) -> float:
    """ONNX with a dynamic number of domains; returns the largest difference in a share against
    torch over examples of every size in ``ex`` and over spaces of 2 and 40 domains (token rows
    resampled), so that the dynamic axis is exercised beyond the training sizes."""
    import onnxruntime as ort  # noqa: PLC0415

    model.eval()
    tok, run, mask, _, pri = ex.batch([0])
    axes = {"tokens": {1: "domains"}, "mask": {1: "domains"}, "prior": {1: "domains"}, "weights": {1: "domains"}}
    torch.onnx.export(model, (tok, run, mask, pri), str(path), input_names=["tokens", "run", "mask", "prior"],
                      output_names=["weights"], dynamo=False, opset_version=17, dynamic_axes=axes)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sizes: dict[int, int] = {}
    for i, rows_of in enumerate(ex.tokens):
        sizes.setdefault(rows_of.shape[0], i)
    cases: list[tuple[torch.Tensor, ...]] = []
    for i in list(sizes.values())[:8]:
        t, r, m, _, p = ex.batch([i])
        cases.append((t, r, m, p))
    rng = np.random.default_rng(0)
    for k in (2, 40):
        rows = rng.integers(0, tok.shape[1], size=k)
        prior = torch.full((1, k), 1.0 / k)
        cases.append((tok[:, rows], run, torch.ones(1, k), prior))
    worst = 0.0
    for t, r, m, p in cases:
        with torch.no_grad():
            want = model(t, r, m, p).numpy()
        got = session.run(None, {"tokens": t.numpy(), "run": r.numpy(), "mask": m.numpy(), "prior": p.numpy()})[0]
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > EXPORT_ATOL:
        raise ExportError(f"{path}: the ONNX network differs from torch by {worst:.2g} in a share")
    return worst


def train_set_policy(data: Sequence[str | Path], out: str | Path, cfg: TrainConfig,
                     progress: bool = True) -> TrainReport:
    """Behaviour cloning of the domain-level agent on the dataset folders ``data``; writes
    ``card.json``, ``policy.onnx``, ``training.json`` and the torch weights ``net.pt`` to ``out``."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    runs, training_data = load_runs(data)
    refuse_evaluation_settings(runs)
    eps = {r.trajectory.header.action.epsilon for r in runs}
    if len(eps) != 1:
        raise DatasetError(f"--data: the folders mix action maps with epsilon {sorted(eps)}; one card has one")
    epsilon = eps.pop()
    train_runs, val_runs = split_runs(runs, cfg.validation_fraction, cfg.seed)
    if not train_runs:
        raise DatasetError("--data: no training trajectories after the validation split")
    train_ex = set_examples(train_runs, cfg.bc_objective_draws, cfg.bc_top_fraction, cfg.objective_range, rng,
                            cfg.bc_max_roughness)
    val_ex = None
    if val_runs:
        try:
            val_ex = set_examples(val_runs, max(cfg.bc_objective_draws // 4, 1), cfg.bc_top_fraction,
                                  cfg.objective_range, rng, cfg.bc_max_roughness)
        except DatasetError:  # no smooth validation run: the validation cross-entropy is not measured
            val_ex = None
    seconds = {"dataset": time.perf_counter() - t0}

    net = DomainSetNet(len(DOMAIN_FEATURES), len(RUN_FEATURES), cfg.transformer_d_model, cfg.transformer_layers)
    _fit_scalers(net, train_ex)
    model = MixtureNet(net, epsilon)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.bc_learning_rate, weight_decay=1e-4)
    losses: list[float] = []
    noise_gen = torch.Generator().manual_seed(cfg.seed)
    t1 = time.perf_counter()
    bar = tqdm(range(cfg.bc_steps), desc="bc (domain set)", disable=not progress, dynamic_ncols=True)
    model.train()
    for step in bar:
        idx = rng.integers(0, len(train_ex), size=min(cfg.batch_size, len(train_ex)))
        loss = _cross_entropy(model, train_ex, idx.tolist(), cfg.bc_history_noise, noise_gen)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    seconds["bc"] = time.perf_counter() - t1
    model.eval()
    metrics: dict[str, float] = {"train/bc_loss_last100": float(np.mean(losses[-100:]))}
    with torch.no_grad():
        for name, ex in (("train", train_ex), ("val", val_ex)):
            if ex is None:
                continue
            chunks = [list(range(i, min(i + 512, len(ex)))) for i in range(0, len(ex), 512)]
            ce = sum(float(_cross_entropy(model, ex, c)) * len(c) for c in chunks) / len(ex)
            floor = float(np.mean([-(t * np.log(t + 1e-12)).sum() for t in ex.targets]))
            metrics[f"{name}/cross_entropy"] = ce
            metrics[f"{name}/kl_to_chosen"] = ce - floor  # 0 when the chosen mixtures are reproduced
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics["export/max_abs_diff_onnx_vs_torch"] = export_set_onnx(model, out / "policy.onnx", val_ex or train_ex)
    tlo, thi, rlo, rhi = _ranges(train_ex, cfg.objective_range)
    seconds["total"] = time.perf_counter() - t0
    card = PolicyCard(
        name=cfg.name, version=cfg.version, kind="onnx",
        description=f"bc (domain-set transformer) on {', '.join(d.folder for d in training_data)}",
        encoder_version=TOKEN_ENCODER_VERSION, action=ActionSpec(level="domain", beta=1.0, epsilon=epsilon),
        model_file="policy.onnx", algorithm="bc/domain-set", objective_range=cfg.objective_range,
        token_low=tlo, token_high=thi, run_low=rlo, run_high=rhi, max_domains=MAX_DOMAINS, clamp_band=CLAMP_BAND,
        training_data=training_data, training_data_hash=stable_hash([d.content_hash for d in training_data]),
        metrics={**metrics, **{f"seconds/{k}": v for k, v in seconds.items()}},
    )
    (out / CARD_FILE).write_text(card.model_dump_json(indent=1) + "\n")
    torch.save(net.state_dict(), out / "net.pt")
    report = TrainReport(algo="bc", config=cfg, train_trajectories=len(train_runs),
                         validation_trajectories=len(val_runs), train_transitions=len(train_ex),
                         seconds=seconds, metrics=metrics, card=card)
    (out / "training.json").write_text(json.dumps({
        **report.model_dump(mode="json", exclude={"card"}),
        "split": {"train": sorted(r.run_id for r in train_runs), "validation": sorted(r.run_id for r in val_runs)},
    }, indent=1, sort_keys=True) + "\n")
    return report
