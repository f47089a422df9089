"""Which environment a dataset folder's runs come from, and which new runs may join it.

Every run of a generated folder starts from one base model, pre-trained on one corpus, evaluated on
one held-out set. Training is deterministic on one machine but not across CPUs: the math-tiny base
rebuilt on another instruction set evaluates up to 0.0026 nats (any domain) away (README,
"One environment per folder"). So a folder built over several sittings admits a run when

- its corpus digest (``provenance["corpus"]``, ``env/provenance.py``) is the folder's, when both
  are recorded; a folder whose records all predate provenance adopts a corpus only when told to
  (``adopt_corpus``), since its corpus cannot be compared;
- on the same corpus and numerics, its base weights digest is the folder's (such runs start
  bit for bit alike, so another base there means pre-training changed);
- its first evaluation is within ``tolerance`` of the folder's oldest run in every domain.

A GPU is numerics too: a run whose model computed on CUDA says so at the end of its numerics string
(the GPU and the dtype, ``env/provenance.py``), so it is admitted into a CPU folder exactly as a run
from another CPU is (its base is compared only with runs on the same numerics; its start always).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixagent.trajectories.contract import ContractError, Feedback, Trajectory

__all__ = ["START_TOLERANCE", "ForeignEnvironmentError", "FolderEnvironment", "start_drift"]

START_TOLERANCE = 0.01
"""Largest per-domain difference (nats) between the first evaluations of one folder's runs: about
4x the largest drift measured between instruction sets. A corpus change is caught by its digest
(a change of target-field training text cannot show in the start at all: the base never saw it)."""


class ForeignEnvironmentError(ContractError):
    """A run comes from another environment than the folder's; the message names folder and run."""


def start_drift(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Largest per-domain difference of two evaluations' domain losses (nats); NaN counts as
    infinitely far."""
    d = max((abs(a[k] - b[k]) for k in b), default=0.0)
    return d if d == d else float("inf")


def _provenance(p: dict[str, str]) -> tuple[str, str, str]:
    return p.get("corpus", ""), p.get("base", ""), p.get("numerics", "")


@dataclass
class FolderEnvironment:
    """The environment of ``root`` as its admitted runs show it (admit the stored ones oldest first)."""

    root: Path
    tolerance: float = START_TOLERANCE
    adopt_corpus: bool = False
    start: Feedback | None = None
    corpus: str = ""
    unrecorded: int = 0
    """Admitted runs without provenance (made before it was recorded, or imported)."""
    bases: dict[tuple[str, str], str] = field(default_factory=dict)
    """(corpus, numerics) -> base weights digest."""

    @classmethod
    def of(cls, root: Path, stored: Iterable[Any], tolerance: float = START_TOLERANCE) -> FolderEnvironment:
        """The environment of a folder's stored records (``StoredTrajectory``), admitted oldest first.
        A corpus adopted before is kept; new runs need ``adopt_corpus`` to adopt one."""
        env = cls(Path(root), tolerance, adopt_corpus=True)
        for st in sorted(stored, key=lambda st: st.meta.finished_at):
            env.admit(st.trajectory, st.meta.provenance)
        env.adopt_corpus = False
        return env

    def _refuse(self, tid: str, why: str) -> None:
        raise ForeignEnvironmentError(f"{self.root}: {tid} {why}. It is not added; write it to another folder")

    def check(self, traj: Trajectory, provenance: dict[str, str]) -> None:
        """Raise :class:`ForeignEnvironmentError` unless ``traj`` may join the folder."""
        tid, first = traj.header.trajectory_id, traj.history.feedback[0]
        corpus, base, numerics = _provenance(provenance)
        if corpus and self.corpus and corpus != self.corpus:
            self._refuse(tid, f"was trained on another corpus (digest {corpus}) than the folder's other records "
                              f"({self.corpus}): a Debian package, the stdlib or the tokenizer differ on this machine")
        if corpus and not self.corpus and self.unrecorded and not self.adopt_corpus:
            self._refuse(tid, f"records its corpus (digest {corpus}) but the folder's {self.unrecorded} "
                              "records predate provenance, so their corpus cannot be compared (its start check "
                              "sees held-out text only). Compare the corpora (bench/heldout_overlap.py on both "
                              "machines), then rerun with --adopt-corpus")
        known = self.bases.get((corpus, numerics)) if corpus and numerics else None
        if known and base and base != known:
            self._refuse(tid, f"starts from another base model (weights digest {base}, the folder's is {known}) "
                              f"on the same corpus and numerics: pre-training changed")
        if self.start is not None:
            drift = start_drift(first.domain_losses, self.start.domain_losses)
            if not drift <= self.tolerance:
                self._refuse(tid, f"starts from another evaluation than the folder's other records (domain losses "
                                  f"differ by up to {drift:.3g}, more than --start-tolerance {self.tolerance:g}): "
                                  "this machine builds another corpus or base model "
                                  "(package, stdlib or torch versions)")

    def admit(self, traj: Trajectory, provenance: dict[str, str]) -> None:
        """:meth:`check`, then count ``traj`` as one of the folder's runs."""
        self.check(traj, provenance)
        corpus, base, numerics = _provenance(provenance)
        self.start = self.start or traj.history.feedback[0]
        self.corpus = self.corpus or corpus
        self.unrecorded += not corpus
        if corpus and numerics and base:
            self.bases.setdefault((corpus, numerics), base)
