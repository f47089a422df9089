"""A small Transformer over the windowed history, as a d3rlpy encoder factory.

The Data Mixing Agent is a 2-layer Transformer decoder over the run's history. ``obs-v2`` already
holds the last ``W + 1`` steps (:data:`~mixagent.trajectories.encoding.WINDOW`): this encoder reads
them as a sequence of tokens, token k = (gains at t-k, field shares trained on before them), each
joined with the step-independent context (last change of the gains, progress, the objective slice).
Two pre-norm self-attention blocks, written with plain matmuls (so the ONNX export traces them
without fused kernels), then the newest token's state is the feature. Attention is causal in time:
a token sees only itself and older steps.

Used through ``encoder: transformer`` in the training config (``agent/train.py``); every algorithm
accepts it, the MLP (d3rlpy's ``VectorEncoderFactory``) is the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from d3rlpy.models.encoders import EncoderFactory, register_encoder_factory
from d3rlpy.models.torch.encoders import Encoder, EncoderWithAction
from torch import nn

from mixagent.trajectories.encoding import WINDOW, layout

__all__ = ["WindowTransformerEncoderFactory", "WindowTransformer", "TOKEN_FEATURES", "history_tokens"]


TOKEN_FEATURES = (("gains", "past_gains"), ("last_shares", "past_shares"))
"""Each history token holds, per field, the gain and the share of one step: the newest from the
first feature of each pair, older ones from the second (the window), as ``encoding.layout`` names them."""


def history_tokens(x: torch.Tensor, n_fields: int, window: int = WINDOW) -> tuple[torch.Tensor, torch.Tensor]:
    """Split field-level ``obs-v2`` rows ``[B, n]`` into tokens ``[B, W+1, 2F]`` (newest first) and
    the context ``[B, n - (W+1)·2F]``: every other feature of :func:`~mixagent.trajectories.encoding.layout`,
    in its order. The slices come from the layout, so a new encoder version cannot silently shift them."""
    rows = layout(n_fields, version="obs-v2")
    if window != WINDOW:
        raise ValueError(f"window: the obs-v2 layout has a window of {WINDOW}, got {window}")
    parts = []
    for now, past in TOKEN_FEATURES:
        newest = x[:, rows[now]][:, None, :]
        older = x[:, rows[past]].reshape(-1, window, n_fields)
        parts.append(torch.cat([newest, older], dim=1))
    in_tokens = {name for pair in TOKEN_FEATURES for name in pair}
    context = torch.cat([x[:, sl] for name, sl in rows.items() if name not in in_tokens], dim=1)
    return torch.cat(parts, dim=2), context


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).split(d, dim=2)
        hd = d // self.n_heads
        q = q.reshape(b, n, self.n_heads, hd).transpose(1, 2)
        k = k.reshape(b, n, self.n_heads, hd).transpose(1, 2)
        v = v.reshape(b, n, self.n_heads, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd) + mask
        y = torch.softmax(att, dim=-1) @ v
        h = h + self.proj(y.transpose(1, 2).reshape(b, n, d))
        return h + self.mlp(self.norm2(h))


class WindowTransformer(nn.Module):
    """Tokens (newest first) + context -> the newest token's state (``[B, d_model]``)."""

    def __init__(self, n_obs: int, n_fields: int, d_model: int, n_layers: int, n_heads: int, extra: int = 0):
        super().__init__()
        self.n_fields = n_fields
        width = list(layout(n_fields, version="obs-v2").values())[-1].stop
        if n_obs != width:
            raise ValueError(f"observation width: the obs-v2 layout of {n_fields} fields has {width} features, "
                             f"got {n_obs} (the Transformer reads field-level obs-v2 only)")
        context = n_obs - (WINDOW + 1) * 2 * n_fields
        self.embed = nn.Linear(2 * n_fields + context + extra, d_model)
        self.position = nn.Parameter(torch.zeros(WINDOW + 1, d_model))
        self.blocks = nn.ModuleList(_Block(d_model, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        # token i (i steps back) may attend to tokens j >= i (itself and older): upper triangle open
        idx = torch.arange(WINDOW + 1)
        self.register_buffer("mask", torch.where(idx[None, :] >= idx[:, None], 0.0, -1e9))

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        tokens, context = history_tokens(x, self.n_fields)
        if extra is not None:
            context = torch.cat([context, extra], dim=1)
        n = tokens.shape[1]
        h = self.embed(torch.cat([tokens, context[:, None, :].expand(-1, n, -1)], dim=2)) + self.position
        for block in self.blocks:
            h = block(h, self.mask)
        return torch.relu(self.norm(h[:, 0]))


class _Encoder(Encoder):  # type: ignore[misc]  # d3rlpy ships no types: its bases are Any
    def __init__(self, net: WindowTransformer):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.net(x)


class _EncoderWithAction(EncoderWithAction):  # type: ignore[misc]  # d3rlpy: untyped base
    def __init__(self, net: WindowTransformer):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, action: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.net(x, action)


@dataclass()
class WindowTransformerEncoderFactory(EncoderFactory):  # type: ignore[misc]  # d3rlpy: untyped base
    """d3rlpy encoder factory of :class:`WindowTransformer` (field-level ``obs-v2`` only).

    Args:
        n_fields: number of fields of the observation (2 for source/target).
        d_model: token width.
        n_layers: self-attention blocks (the paper's agent has 2).
        n_heads: attention heads.
    """

    n_fields: int = 2
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4

    def create(self, observation_shape: tuple[int, ...]) -> Encoder:  # type: ignore[override]
        return _Encoder(WindowTransformer(observation_shape[0], self.n_fields, self.d_model, self.n_layers,
                                          self.n_heads))

    def create_with_action(self, observation_shape: tuple[int, ...], action_size: int,  # type: ignore[override]
                           discrete_action: bool = False) -> EncoderWithAction:
        return _EncoderWithAction(WindowTransformer(observation_shape[0], self.n_fields, self.d_model,
                                                    self.n_layers, self.n_heads, extra=action_size))

    @staticmethod
    def get_type() -> str:
        return "mixagent_window_transformer"


register_encoder_factory(WindowTransformerEncoderFactory)
