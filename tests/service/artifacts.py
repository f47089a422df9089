"""Stand-in learned policies for the service tests: a real ONNX network ``obs -> tanh(obs @ W + b)``
written with the onnx package (no torch), with a card like the one ``mixagent agent export`` writes,
and the decisions it must give (computed here with the same encoder, independently of the server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.trajectories import (
    ActionSpec,
    DomainSpace,
    Feedback,
    History,
    Objective,
    action_size,
    action_to_weights,
    encode,
    observation_size,
)

__all__ = ["StandIn", "write_onnx_policy", "start_history"]


class StandIn:
    """The weights of a written stand-in and the decisions they give."""

    def __init__(self, w: np.ndarray, b: np.ndarray, spec: ActionSpec, encoder_version: str):
        self.w, self.b, self.spec, self.encoder_version = w, b, spec, encoder_version

    def weights(self, history: History, horizon: int, objective: Objective | None = None) -> list[float]:
        obs = encode(history, horizon, self.spec, objective or Objective(), self.encoder_version)
        return list(action_to_weights(np.tanh(obs @ self.w + self.b), history.space, self.spec).values)

    def first(self, space: DomainSpace, horizon: int, objective: Objective | None = None) -> list[float]:
        """The network's mixture before any feedback (its decision at a run's start)."""
        return self.weights(start_history(space), horizon, objective)


def start_history(space: DomainSpace) -> History:
    """A history holding one start evaluation (every relative feature is 0 there)."""
    fb = Feedback(step=0, tokens_seen=0, field_scores=dict.fromkeys(space.fields, -1.0),
                  domain_losses=dict.fromkeys(space.names, 1.0))
    return History(space=space, feedback=[fb])


def write_onnx_policy(folder: Path, space: DomainSpace, spec: ActionSpec | None = None, *, seed: int = 0,
                      width: int | None = None, name: str = "learned", version: str | None = None,
                      encoder_version: str = "obs-v2", **card: Any) -> StandIn:
    """Write ``folder/policy.onnx`` and ``folder/card.json``; ``width`` overrides the input width
    (a card that does not match its network), ``card`` adds or overrides card keys."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = spec or ActionSpec()
    n, a = width or observation_size(space, spec, encoder_version), action_size(space, spec)
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, size=(n, a)).astype(np.float32)
    b = rng.normal(0, 0.1, size=(a,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "W"], ["z"]), helper.make_node("Add", ["z", "b"], ["y"]),
         helper.make_node("Tanh", ["y"], ["action"])],
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", a])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "policy.onnx")
    body = {"name": name, "version": version or f"s{seed}", "kind": "onnx", "model_file": "policy.onnx",
            "encoder_version": encoder_version, "fields": list(space.fields), "action": spec.model_dump(),
            "algorithm": "stand-in", "objective_range": {"spread_penalty_min": 0.0, "spread_penalty_max": 0.9,
                                                          "max_weight_ratio": 3.0},
            "training_data_hash": "abc123", "metrics": {"eval/return": 0.1}, **card}
    (folder / "card.json").write_text(json.dumps(body))
    return StandIn(w, b, spec, encoder_version)
