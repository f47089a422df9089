"""The policy registry: built-in baselines plus loaded artifacts, keyed by ``(name, version)``.

Runs are pinned to the version they started with, so loading a new version never changes the
decisions of running runs. Loading is atomic: the artifact is read and probed first (see
:func:`mixagent.agent.policy.load_artifact`), and only then are new lookup tables swapped in with one
assignment; an invalid artifact raises :class:`ArtifactError` and leaves the registry as it was.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixagent.agent.baselines import BASELINES, build_baseline
from mixagent.agent.policy import (
    CARD_FILE,
    ArtifactError,
    MixingPolicy,
    PolicyCard,
    PolicyFactory,
    load_artifact,
)
from mixagent.trajectories.contract import ActionSpec, ContractError, DomainSpace

__all__ = ["PolicyEntry", "PolicyRegistry", "BUILTIN_VERSION", "BUNDLED_DIR", "FALLBACK_POLICY"]

log = logging.getLogger(__name__)

BUILTIN_VERSION = "builtin"
FALLBACK_POLICY = "loss-softmax"
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "agent" / "artifacts"
"""Artifacts shipped with the package (``agent/artifacts/<name>/card.json``); the first one found
becomes the default policy."""


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
    _by_horizon: dict[int, MixingPolicy] = field(default_factory=dict, repr=False)

    def policy(self, horizon: int) -> MixingPolicy:
        p = self._by_horizon.get(horizon)
        if p is None:
            p = self._by_horizon[horizon] = self.factory(horizon)
        return p

    @property
    def action(self) -> ActionSpec:
        return self.card.action if self.card is not None else ActionSpec()

    def check_space(self, space: DomainSpace) -> None:
        if self.card is not None:
            self.card.check_space(space)


def _builtin(rule: str) -> PolicyEntry:
    policy = build_baseline(rule)
    return PolicyEntry(
        name=rule, version=BUILTIN_VERSION, kind="builtin", factory=lambda _h: policy,
        rule=rule, params=dict(getattr(policy, "params", {})),
    )


class PolicyRegistry:
    def __init__(self, default_policy: str | None = None):
        entries = {(r, BUILTIN_VERSION): _builtin(r) for r in BASELINES}
        self._entries: dict[tuple[str, str], PolicyEntry] = entries
        self._current: dict[str, str] = {r: BUILTIN_VERSION for r in BASELINES}
        self._lock = threading.Lock()
        self._default = default_policy

    # ----- loading ------------------------------------------------------------------------------
    def load(self, folder: str | Path, make_current: bool = True) -> PolicyEntry:
        """Load (or re-confirm) the artifact in ``folder`` and (by default) make it the current
        version of its name. Raises :class:`ArtifactError`; the registry is unchanged then."""
        card, factory = load_artifact(folder)
        with self._lock:
            key = (card.name, card.version)
            old = self._entries.get(key)
            if old is not None and old.card != card:
                raise ArtifactError(
                    f"{Path(folder) / CARD_FILE}: {card.name}@{card.version} is already loaded with a "
                    "different card; give the new artifact a new version"
                )
            entry = old or PolicyEntry(
                name=card.name, version=card.version, kind=card.kind, factory=factory, card=card,
                path=str(Path(folder).resolve()), params=dict(card.params), rule=card.rule,
            )
            entries = dict(self._entries)
            entries[key] = entry
            current = dict(self._current)
            if make_current or card.name not in current:
                current[card.name] = card.version
            self._entries, self._current = entries, current  # the swap
        log.info("loaded policy %s@%s (%s) from %s", card.name, card.version, card.kind, folder)
        return entry

    def load_dir(self, root: Path) -> list[str]:
        """Load every ``root/*/card.json`` in name order; returns the messages of the ones refused."""
        errors = []
        if root.is_dir():
            for card in sorted(root.glob(f"*/{CARD_FILE}")):
                try:
                    self.load(card.parent)
                except ArtifactError as e:
                    errors.append(str(e))
                    log.error("refused policy artifact: %s", e)
        return errors

    # ----- lookup -------------------------------------------------------------------------------
    @property
    def default_name(self) -> str:
        if self._default:
            return self._default
        bundled = sorted(e.name for e in self._entries.values() if e.path and e.path.startswith(str(BUNDLED_DIR)))
        return bundled[0] if bundled else FALLBACK_POLICY

    def get(self, name: str | None, version: str | None = None) -> PolicyEntry:
        """The entry for ``name`` (the default when None) at ``version`` (the current when None);
        ContractError names what is unknown."""
        name = name or self.default_name
        entries, current = self._entries, self._current
        if version is None:
            if name not in current:
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

    def is_current(self, entry: PolicyEntry) -> bool:
        return self._current.get(entry.name) == entry.version
