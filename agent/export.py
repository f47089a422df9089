"""Export a trained d3rlpy policy as a policy artifact: ``card.json`` + an ONNX network.

d3rlpy's own ONNX export (``save_policy('x.onnx')``) fails on torch >= 2.9, so the network is wrapped in a plain
``nn.Module`` (observation scaler -> ``impl.predict_best_action`` -> action scaler) and exported with
the TorchScript-based exporter (``dynamo=False``, a dynamic batch axis). The export is checked
before anything is written: onnxruntime must give the torch policy's actions to 1e-5 on the given
observations. The artifact then loads with :func:`~mixagent.agent.onnx_policy.load_artifact` without
torch.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mixagent.agent.card import CARD_FILE, PolicyCard
from mixagent.agent.errors import ExportError
from mixagent.agent.onnx_policy import load_artifact

__all__ = ["MODEL_FILE", "ExportError", "PolicyNet", "export_onnx", "write_artifact"]

MODEL_FILE = "policy.onnx"
ATOL = 1e-5



class PolicyNet(nn.Module):
    """``obs -> action`` of a fitted d3rlpy algorithm, scalers included."""

    def __init__(self, algo: Any):
        super().__init__()
        self.impl = algo.impl
        self.observation_scaler = algo.config.observation_scaler
        self.action_scaler = algo.config.action_scaler
        self.modules_ = nn.ModuleList([m for m in vars(algo.impl.modules).values() if isinstance(m, nn.Module)])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.observation_scaler.transform(obs) if self.observation_scaler else obs
        a = self.impl.inner_predict_best_action(x)
        if self.action_scaler:
            a = self.action_scaler.reverse_transform(a)
        return torch.clamp(a, -1.0, 1.0)


def torch_actions(algo: Any, observations: np.ndarray) -> np.ndarray:
    net = PolicyNet(algo).eval()
    with torch.no_grad():
        return net(torch.as_tensor(observations, dtype=torch.float32)).numpy()


def export_onnx(algo: Any, path: Path, observations: np.ndarray) -> float:
    """Write the ONNX network of ``algo`` to ``path``; return the largest |onnx - torch| action
    difference on ``observations`` (:class:`ExportError` when above 1e-5)."""
    import onnxruntime as ort  # noqa: PLC0415 - only the check after an export runs the network

    net = PolicyNet(algo).eval()
    example = torch.as_tensor(observations[:2], dtype=torch.float32)
    with torch.no_grad():
        torch.onnx.export(net, (example,), str(path), input_names=["obs"], output_names=["action"],
                          dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}}, dynamo=False,
                          opset_version=17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"obs": observations.astype(np.float32)})[0]
    want = torch_actions(algo, observations)
    diff = float(np.abs(got - want).max())
    if diff > ATOL:
        path.unlink(missing_ok=True)
        raise ExportError(f"{path}: the ONNX network differs from the torch policy by {diff:.2g} (> {ATOL})")
    return diff


def write_artifact(algo: Any, out: Path, card: PolicyCard, observations: np.ndarray) -> PolicyCard:
    """Write ``out/policy.onnx`` and ``out/card.json`` (the card gets the model file, the export
    check and a creation time), then load the folder back as the service would."""
    out.mkdir(parents=True, exist_ok=True)
    diff = export_onnx(algo, out / MODEL_FILE, observations)
    card = card.model_copy(update={
        "model_file": MODEL_FILE,
        "metrics": {**card.metrics, "export/max_abs_diff_onnx_vs_torch": diff},
        "created_at": card.created_at or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    })
    PolicyCard.model_validate(card.model_dump())
    (out / CARD_FILE).write_text(json.dumps(card.model_dump(mode="json"), indent=1, sort_keys=True) + "\n")
    load_artifact(out)  # refuses an artifact the service would refuse
    return card
