"""The policy registry of one process: built-in baselines plus loaded artifacts, keyed by ``(name, version)``.

Runs are pinned to the version they started with, so loading a new version never changes the
decisions of running runs. Loading is atomic: the artifact is read and probed first (see
:func:`mixagent.agent.onnx_policy.load_artifact`), and only then are new lookup tables swapped in with one
assignment; an invalid artifact raises :class:`ArtifactError` and leaves the registry as it was.

Which version of a name is *current* (what new runs get) is decided by the run store
(:mod:`mixagent.service.server.runs`) from the shared database when an artifact was loaded through
the admin route, so every replica agrees; the registry's own ``current`` map is the start-up choice
(built-ins, the bundled artifacts, the policy folder scan) for names the database does not know.

A learned policy is built per run with the run's horizon and objective (``entry.policy``). A run
whose domain space the policy cannot read is served, every decision, by the *fallback* baseline
(``MIXAGENT_FALLBACK_POLICY``, :class:`SpaceFallback`), never refused; a decision whose observation
falls outside the training ranges goes to the same baseline inside
:class:`~mixagent.agent.onnx_policy.OnnxPolicy`.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixagent.agent.baselines import BASELINES, build_baseline
from mixagent.agent.card import CARD_FILE, ArtifactError, PolicyCard
from mixagent.agent.onnx_policy import DEFAULT_FALLBACK, GuardedDecision, load_artifact
from mixagent.agent.registry import TRAINER_SIDE_METHODS, trainer_side_refusal
from mixagent.trajectories.contract import ActionSpec, ContractError, DomainSpace, History, Objective, Weights
from mixagent.trajectories.policy import MixingPolicy, PolicyFactory

__all__ = [
    "PolicyEntry",
    "PolicyRegistry",
    "SpaceFallback",
    "BUILTIN_VERSION",
    "DEFAULT_WITHOUT_BUNDLE",
    "FALLBACK_POLICY",
    "bundled_dir",
    "artifact_digest",
]

log = logging.getLogger(__name__)

BUILTIN_VERSION = "builtin"
DEFAULT_WITHOUT_BUNDLE = "uniform"
"""The default policy when no artifact ships in the package and ``MIXAGENT_DEFAULT_POLICY`` is unset:
the plain uniform mixture, since ``loss-softmax`` scored below it on math-tiny (B 0.070 vs 0.097,
README "The agent")."""
FALLBACK_POLICY = DEFAULT_FALLBACK
"""The default of ``MIXAGENT_FALLBACK_POLICY``: the baseline that serves what a learned policy cannot."""
MAX_DIGEST_BYTES = 256 * 1024 * 1024
"""An artifact folder larger than this is refused (its digest would cost too much to compute)."""


def bundled_dir() -> Path | None:
    """``artifacts/`` of the installed ``mixagent.agent`` package (package data; found through
    :mod:`importlib.resources`, so a wheel install finds it too), or None when there is none."""
    root = importlib.resources.files("mixagent.agent") / "artifacts"
    if not isinstance(root, Path):  # pragma: no cover - a zipped install: onnxruntime needs real files
        log.warning("bundled policies: %s is not a folder on disk; none loaded", root)
        return None
    return root if root.is_dir() else None


def artifact_digest(folder: Path) -> str:
    """sha256 over the artifact's files (relative paths and contents, in path order)."""
    h = hashlib.sha256()
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith("__pycache__") or "/__pycache__/" in rel:
            continue
        data = path.read_bytes()
        total += len(data)
        if total > MAX_DIGEST_BYTES:
            raise ArtifactError(f"{folder}: the artifact holds more than {MAX_DIGEST_BYTES // 2**20} MB")
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


class SpaceFallback:
    """Serves every decision of a run whose domain space a policy cannot read with the fallback
    baseline, and says so (:class:`~mixagent.agent.onnx_policy.GuardedDecision`)."""

    def __init__(self, fallback: MixingPolicy, reason: str):
        self.name = fallback.name
        self.fallback = fallback
        self.reason = reason

    def decide(self, space: DomainSpace, history: History) -> GuardedDecision:
        weights = (self.fallback.next_weights(space, history) if history.feedback
                   else self.fallback.initial_weights(space))
        return GuardedDecision(weights, fallback=self.fallback.name, reason=self.reason)

    def initial_weights(self, space: DomainSpace) -> Weights:
        return self.fallback.initial_weights(space)

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        return self.fallback.next_weights(space, history)


@dataclass
class PolicyEntry:
    name: str
    version: str
    kind: str
    factory: PolicyFactory
    card: PolicyCard | None = None
    path: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    rule: str | None = None
    loaded_at: float = field(default_factory=time.time)
    bundled: bool = False
    digest: str | None = None
    fallback: str = FALLBACK_POLICY

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def action(self) -> ActionSpec:
        return self.card.action if self.card is not None else ActionSpec()

    def space_problem(self, space: DomainSpace) -> str | None:
        """Why this policy cannot read ``space`` (its decisions then come from the fallback)."""
        return self.card.space_problem(space) if self.card is not None else None

    def policy(self, horizon: int, objective: Objective, space: DomainSpace) -> MixingPolicy:
        """The policy of one run. ContractError (naming the range) for an objective outside a
        learned policy's trained range, unless the run's space does not fit the policy at all: then
        the fallback serves every decision and the objective does not matter to it."""
        problem = self.space_problem(space)
        if problem is not None:
            return SpaceFallback(build_baseline(self.fallback), problem)
        return self.factory(space, horizon, objective)


def _builtin(rule: str) -> PolicyEntry:
    policy = build_baseline(rule)
    return PolicyEntry(
        name=rule, version=BUILTIN_VERSION, kind="builtin", factory=lambda space, horizon, objective=None: policy,
        rule=rule, params=dict(getattr(policy, "params", {})),
    )


class PolicyRegistry:
    def __init__(self, default_policy: str | None = None, fallback: str = FALLBACK_POLICY):
        if fallback not in BASELINES:
            raise ContractError(f"fallback_policy: unknown baseline {fallback!r}; known: {sorted(BASELINES)}")
        entries = {(r, BUILTIN_VERSION): _builtin(r) for r in BASELINES}
        self._entries: dict[tuple[str, str], PolicyEntry] = entries
        self._current: dict[str, str] = {r: BUILTIN_VERSION for r in BASELINES}
        self._lock = threading.Lock()
        self._default = default_policy
        self.fallback = fallback
        self.bundled_refused: list[str] = []
        """Messages of the bundled artifacts that did not load (``/readyz`` reports them)."""

    # ----- loading ------------------------------------------------------------------------------
    def load(self, folder: str | Path, make_current: bool = True, *, bundled: bool = False,
             expect_digest: str | None = None) -> PolicyEntry:
        """Load (or re-confirm) the artifact in ``folder`` and (by default) make it the current
        version of its name here. Raises :class:`ArtifactError` (also for a folder whose files
        differ from ``expect_digest``, or from the same name@version already loaded); the registry
        is unchanged then."""
        folder = Path(folder)
        card, factory = load_artifact(folder, fallback=self.fallback)
        digest = artifact_digest(folder)
        if expect_digest is not None and digest != expect_digest:
            raise ArtifactError(
                f"{folder}: the files of {card.ref} here differ from the ones loaded through another replica "
                f"(sha256 {digest[:12]} here, {expect_digest[:12]} recorded); every replica must read the "
                "same artifact at the same path")
        with self._lock:
            key = (card.name, card.version)
            old = self._entries.get(key)
            if old is not None and (old.card != card or (old.digest is not None and old.digest != digest)):
                raise ArtifactError(
                    f"{folder / CARD_FILE}: {card.ref} is already loaded with a different "
                    f"{'card' if old.card != card else 'model'}; give the new artifact a new version"
                )
            entry = old or PolicyEntry(
                name=card.name, version=card.version, kind=card.kind, factory=factory, card=card,
                path=str(folder.resolve()), params=dict(card.params), rule=card.rule, bundled=bundled,
                digest=digest, fallback=self.fallback,
            )
            entries = dict(self._entries)
            entries[key] = entry
            current = dict(self._current)
            if make_current or card.name not in current:
                current[card.name] = card.version
            self._entries, self._current = entries, current  # the swap
        log.info("loaded policy %s (%s) from %s", card.ref, card.kind, folder)
        return entry

    def load_dir(self, root: Path | None, *, bundled: bool = False) -> list[str]:
        """Load every ``root/*/card.json`` in name order; returns the messages of the ones refused."""
        errors = []
        if root is not None and root.is_dir():
            for card in sorted(root.glob(f"*/{CARD_FILE}")):
                try:
                    self.load(card.parent, bundled=bundled)
                except (ArtifactError, OSError) as e:
                    errors.append(str(e))
                    log.error("refused policy artifact: %s", e)
        if bundled:
            self.bundled_refused += errors
        return errors

    # ----- lookup -------------------------------------------------------------------------------
    @property
    def default_name(self) -> str:
        """``MIXAGENT_DEFAULT_POLICY``, else the first bundled artifact (by name), else
        :data:`DEFAULT_WITHOUT_BUNDLE`."""
        if self._default:
            return self._default
        bundled = sorted({e.name for e in self._entries.values() if e.bundled})
        return bundled[0] if bundled else DEFAULT_WITHOUT_BUNDLE

    def get(self, name: str | None, version: str | None = None) -> PolicyEntry:
        """The entry for ``name`` (the default when None) at ``version`` (this process's current
        when None); ContractError names what is unknown."""
        name = name or self.default_name
        entries, current = self._entries, self._current
        if version is None:
            if name not in current:
                if name in TRAINER_SIDE_METHODS:  # a known method, but one that needs the trainer's model
                    raise ContractError(trainer_side_refusal(name))
                raise ContractError(f"policy: unknown policy {name!r}; known: {sorted(current)}")
            version = current[name]
        entry = entries.get((name, version))
        if entry is None:
            known = sorted(v for (n, v) in entries if n == name)
            raise ContractError(f"policy_version: policy {name!r} has no version {version!r}; known: {known}")
        return entry

    def find(self, name: str, version: str) -> PolicyEntry | None:
        return self._entries.get((name, version))

    def entries(self) -> list[PolicyEntry]:
        return sorted(self._entries.values(), key=lambda e: (e.name, e.loaded_at))

    def current(self) -> dict[str, str]:
        """This process's start-up choice of version per name (the store overlays the database's)."""
        return dict(self._current)
