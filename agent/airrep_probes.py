"""Probe data for the AirRep encoder: (domain subset → change of each field's held-out loss) pairs.

AirRep learns its group scores from measured effects: train on a subset of the data, see how a
query's loss moves. Here a *subset* is a set of domains and a *query* is a field's held-out
evaluation. One probe, from the setting's base model (the same start as every episode):

1. ``backend.reset(seed)`` (base weights, a fresh optimizer, step 0: the run's own schedule);
2. ``steps`` optimizer steps (default one interval, ``cpt.interval``) on batches drawn from the
   subset's domains only, in proportion to their priors;
3. one evaluation on the fixed held-out windows: per domain, ``drop_k = L_k(base) − L_k(after)``,
   and per field the mean over its domains (``field_drop``; positive: the subset helped the field).

Subsets are drawn from a seeded generator (:func:`draw_subsets`: a size uniform in
``1 … max_size``, then that many distinct domains; no subset twice), so probe i is the same on every
machine with the same base. :func:`collect_probes` appends one JSON line per probe to a file as it
goes and skips probes already there (rerun to resume), with each probe's CPU-seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from math import comb
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from mixagent.trajectories.contract import ContractError, DomainSpace

if TYPE_CHECKING:  # torch and the model come with the backend; drawing subsets needs neither
    from mixagent.env.backend import CPTBackend

__all__ = ["draw_subsets", "field_losses", "run_probe", "collect_probes", "read_probes"]


def draw_subsets(k: int, n: int, seed: int, max_size: int | None = None) -> list[tuple[int, ...]]:
    """``n`` distinct domain subsets of ``0 … k−1`` (sorted index tuples), each of a size uniform in
    ``1 … max_size`` (default ``k − 1``), drawn from ``seed``; a prefix of a longer draw."""
    max_size = max_size or max(1, k - 1)
    if not 1 <= max_size <= k:
        raise ContractError(f"max_size: must be in 1 … {k} (the number of domains), got {max_size}")
    possible = sum(comb(k, s) for s in range(1, max_size + 1))
    if n > possible:
        raise ContractError(f"n: {n} distinct subsets of sizes 1 … {max_size} out of {k} domains do not exist "
                            f"(there are {possible})")
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < n:
        size = int(rng.integers(1, max_size + 1))
        subset = tuple(sorted(int(i) for i in rng.choice(k, size=size, replace=False)))
        if subset not in seen:
            seen.add(subset)
            out.append(subset)
    return out


def field_losses(space: DomainSpace, domain_losses: np.ndarray) -> np.ndarray:
    """Per field, the mean held-out loss of its domains (equal weight, as the field scores average)."""
    fm = space.field_matrix()
    return np.asarray((fm @ domain_losses) / fm.sum(axis=1))


def run_probe(backend: CPTBackend, subset: tuple[int, ...], steps: int, seed: int,
              base_losses: np.ndarray) -> dict[str, Any]:
    """One probe (module docstring): train ``steps`` from the base on ``subset`` and measure the drops."""
    space = backend.space
    probs = np.zeros(space.size)
    probs[list(subset)] = space.priors()[list(subset)]
    probs /= probs.sum()
    c0 = time.process_time()
    backend.reset(seed)
    backend.train(probs, steps)
    fb = backend.evaluate()
    cpu = time.process_time() - c0
    after = np.array([fb.domain_losses[n] for n in space.names])
    drop = base_losses - after
    return {
        "subset": [space.names[i] for i in subset],
        "weights": probs.tolist(),
        "seed": seed,
        "steps": steps,
        "domain_drop": drop.tolist(),
        "field_drop": (field_losses(space, base_losses) - field_losses(space, after)).tolist(),
        "cpu_s": cpu,
    }


def read_probes(path: Path) -> list[dict[str, Any]]:
    """The probes stored at ``path`` (JSON Lines; a torn last line, from a killed run, is dropped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def collect_probes(backend: CPTBackend, path: Path, n: int, *, seed: int, steps: int | None = None,
                   max_size: int | None = None, progress: bool = True) -> Iterator[dict[str, Any]]:
    """Probes ``0 … n−1`` of the seeded plan, appended to ``path`` one JSON line each as they finish
    (those already there are kept and yielded first). The first line is the header: setting space,
    base losses, steps, seed, so that a rerun with other arguments is refused instead of mixed in."""
    space = backend.space
    steps = steps or backend.cpt.interval
    backend.reset(seed)
    base = backend.evaluate()
    base_losses = np.array([base.domain_losses[name] for name in space.names])
    header = {"kind": "header", "domains": list(space.names), "fields": list(space.fields),
              "field_of": [d.field for d in space.domains], "priors": space.priors().tolist(),
              "steps": steps, "seed": seed, "max_size": max_size, "base_domain_loss": base_losses.tolist()}
    stored = read_probes(path)
    if stored:
        old = {k: v for k, v in stored[0].items() if k != "base_domain_loss"}
        new = {k: v for k, v in header.items() if k != "base_domain_loss"}
        if old != new:
            raise ContractError(f"{path}: holds probes of another plan ({old}); this run asks for {new}")
        if not np.allclose(stored[0]["base_domain_loss"], base_losses, atol=1e-4):
            raise ContractError(f"{path}: its base losses differ from this backend's (another base model)")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(header) + "\n")
    done = stored[1:]
    yield from done
    subsets = draw_subsets(space.size, n, seed, max_size)
    with path.open("a") as f, tqdm(total=n, initial=min(len(done), n), desc="probes", disable=not progress) as bar:
        for i in range(len(done), n):
            probe = {"index": i, **run_probe(backend, subsets[i], steps, seed * 100_003 + i, base_losses)}
            f.write(json.dumps(probe) + "\n")
            f.flush()
            bar.update(1)
            yield probe
