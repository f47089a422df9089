"""One shared tester for every ``MixingPolicy``: shape, floor, sum, determinism, no mutation of the
history, and a save/load round trip through an artifact card where the policy has one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.agent.onnx_policy import load_artifact
from mixagent.trajectories import WEIGHT_FLOOR, DomainSpace, Feedback, History, Weights
from mixagent.trajectories.policy import MixingPolicy

SPACES = [
    DomainSpace.from_fields({"source": ["web", "code", "books"], "target": ["proofs"]}, {"web": 5.0, "code": 2.0}),
    DomainSpace.from_fields({"source": ["a"], "target": ["b", "c"], "extra": ["d"]}),
]


def rollout(policy: MixingPolicy, space: DomainSpace, stages: int = 5, seed: int = 0) -> tuple[History, list[Weights]]:
    rng = np.random.default_rng(seed)
    h = History(space=space)
    out = [policy.initial_weights(space)]
    for t in range(stages + 1):
        h.record_feedback(Feedback(
            step=10 * t, tokens_seen=1000 * t,
            field_scores={f: float(-3 + 0.1 * t + rng.normal(0, 0.01)) for f in space.fields},
            domain_losses={d: float(3 - 0.05 * t * rng.random()) for d in space.names},
        ))
        before = h.model_dump()
        w = policy.next_weights(space, h)
        assert h.model_dump() == before, "next_weights mutated the history"
        h.record_weights(w)
        out.append(w)
    return h, out


def check_policy(policy: MixingPolicy, card: dict[str, Any] | None, tmp_path: Path) -> None:
    assert isinstance(policy, MixingPolicy) and isinstance(policy.name, str)
    for i, space in enumerate(SPACES):
        _, ws = rollout(policy, space)
        for w in ws:
            v = w.as_array()
            assert v.shape == (space.size,)
            assert (v >= WEIGHT_FLOOR * (1 - 1e-6)).all() and np.isfinite(v).all()
            assert abs(v.sum() - 1) < 1e-9
        _, again = rollout(policy, space)
        assert [w.values for w in again] == [w.values for w in ws], "not deterministic"
        if card is not None:  # save/load round trip: the artifact serves the same decisions
            folder = tmp_path / f"{card['name']}-{i}"
            folder.mkdir()
            (folder / "card.json").write_text(json.dumps(card))
            _, factory = load_artifact(folder)
            _, loaded = rollout(factory(space, 5), space)
            assert [w.values for w in loaded] == [w.values for w in ws]
