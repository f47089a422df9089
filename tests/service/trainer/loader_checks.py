"""Checks every mixagent loader passes (the Sampler, the ``datasets`` and litdata mixtures): draws
that follow the weights and their changes, and the sequence a restored loader yields."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest


def check_draws_follow_the_weights(make: Callable[[dict[str, float]], Any]) -> None:
    """A mixture of web/code/proofs made by ``make(weights)`` draws 2000 examples in the weights'
    shares (within ~3.5 binomial sd), and the very next draw after a change follows it."""
    mix = make({"web": 0.7, "code": 0.2, "proofs": 0.1})
    it = iter(mix)
    first = [next(it)["domain"] for _ in range(2000)]
    share = {d: first.count(d) / 2000 for d in mix.names}
    assert share == pytest.approx({"web": 0.7, "code": 0.2, "proofs": 0.1}, abs=0.035)
    mix.set_weights({"web": 0.0, "code": 0.0, "proofs": 1.0})
    assert {next(it)["domain"] for _ in range(50)} == {"proofs"}


def drawn_with_a_resume(make: Callable[[], Any], resume_at: int | None, *, total: int, every: int,
                        key: Callable[[Any], Any] = lambda x: x) -> list[Any]:
    """``total`` draws (``key`` of each) of the loader ``make()`` builds, new random weights (and a
    decision id) every ``every`` draws; at ``resume_at`` the loader is replaced by a fresh one that
    loads the old one's JSON round-tripped ``state_dict()``, as after a kill and a restart."""
    loader = make()
    out: list[Any] = []
    it = iter(loader)
    while len(out) < total:
        if len(out) % every == 0:
            loader.set_weights(np.random.default_rng(len(out)).dirichlet([1, 1, 1]), decision=f"d{len(out)}")
        if resume_at is not None and len(out) == resume_at:
            state = json.loads(json.dumps(loader.state_dict()))
            loader = make()
            loader.load_state_dict(state)
            assert loader.decision == f"d{resume_at // every * every}"  # the decision it samples under
            it = iter(loader)
        out.append(key(next(it)))
    return out


def check_workers_follow_the_weights(make: Callable[[dict[str, float]], Any]) -> None:
    """Weights set in the main process reach 2 DataLoader worker processes: at most
    prefetch_factor x workers = 2 batches drawn before a change still follow the old mixture."""
    import torch

    mix = make({"web": 1.0, "code": 0.0, "proofs": 0.0})
    it = iter(torch.utils.data.DataLoader(mix, batch_size=10, num_workers=2, prefetch_factor=1,
                                          collate_fn=lambda b: [x["domain"] for x in b]))
    assert {d for _ in range(4) for d in next(it)} == {"web"}
    mix.set_weights({"web": 0.0, "code": 1.0, "proofs": 0.0})
    later = [next(it) for _ in range(8)]
    assert all(set(b) == {"code"} for b in later[2:]), later
