"""A static mixture per objective, chosen offline (RegMix's output), served with numpy only.

An offline searcher (:mod:`mixagent.agent.regmix`) fits a model of the outcome over proxy runs
and picks one constant mixture per objective on a grid. What it ships is this table, not the
model: ``mixtures.json`` beside a ``kind: mixture`` card, read without unpickling, so the service
serves it with no new dependency. A run gets the entry whose objective is nearest to its own
(spread penalty, plus the L1 distance of the normalised field weights), at every decision. A
mixture only means something on the domains it was fitted on: the card pins them, and a run over
other domains goes to the fallback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mixagent.trajectories.contract import (
    ContractError,
    DomainSpace,
    History,
    Name,
    Objective,
    Weights,
    format_validation_errors,
)

__all__ = ["MIXTURE_FILE", "MixtureEntry", "MixtureTable", "StaticMixturePolicy", "read_mixture_table"]

MIXTURE_FILE = "mixtures.json"


class MixtureEntry(BaseModel):
    """One objective of the grid and the mixture chosen for it (and what the model predicted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objective: Objective
    weights: list[float] = Field(min_length=1)
    predicted: float | None = None
    """The fitted model's prediction of the final balanced score of this mixture."""


class MixtureTable(BaseModel):
    """``mixtures.json``: the domains (in space order) and one entry per objective of the grid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Name
    domains: list[Name] = Field(min_length=1)
    entries: list[MixtureEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> MixtureTable:
        for i, e in enumerate(self.entries):
            if len(e.weights) != len(self.domains):
                raise ValueError(f"entries[{i}].weights: {len(e.weights)} values for {len(self.domains)} domains")
            Weights(values=tuple(e.weights))  # a mixture: each share >= the floor, summing to 1
        return self

    def nearest(self, objective: Objective, fields: tuple[str, ...]) -> MixtureEntry:
        """The entry whose objective is closest to ``objective`` on ``fields``."""
        c = objective.weight_vector(fields)

        def distance(e: MixtureEntry) -> float:
            return abs(e.objective.spread_penalty - objective.spread_penalty) + float(
                np.abs(e.objective.weight_vector(fields) - c).sum())

        return min(self.entries, key=distance)


class StaticMixturePolicy:
    """The table's mixture for one objective, at every decision (it reads no feedback)."""

    def __init__(self, name: str, table: MixtureTable, objective: Objective):
        self.name = name
        self.table = table
        self.objective = objective

    def _weights(self, space: DomainSpace) -> Weights:
        if list(space.names) != self.table.domains:
            raise ContractError(f"space: {self.name} was fitted on domains {self.table.domains}, the run has "
                                f"{list(space.names)}")
        return Weights(values=tuple(self.table.nearest(self.objective, space.fields).weights))

    def initial_weights(self, space: DomainSpace) -> Weights:
        return self._weights(space)

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        return self._weights(space)


def read_mixture_table(path: Path) -> MixtureTable:
    """``mixtures.json``; ContractError naming the file and the first bad field."""
    try:
        return MixtureTable.model_validate_json(path.read_text())
    except OSError as e:
        raise ContractError(f"{path}: cannot read ({e.strerror})") from None
    except ValidationError as e:
        raise ContractError(f"{path}: {format_validation_errors(e.errors())[0]}") from None
