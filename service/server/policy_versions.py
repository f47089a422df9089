"""Which version of each policy is current, and the artifacts recorded for every replica.

Which version of a policy new runs get is one truth in the shared database (``policy_current``),
read on every run creation: a load through any replica is what the next run on every replica gets.
An artifact recorded there (``policy_artifacts``, by the admin route of any replica) is loaded here
from its recorded path when first needed; a replica that cannot read it, or reads other files
there, answers 503 naming the path (and ``/readyz`` says so) rather than serve another version.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session, sessionmaker

from mixagent.agent.card import ArtifactError
from mixagent.service.server.errors import Unavailable
from mixagent.service.server.metrics import Metrics
from mixagent.service.server.models import PolicyArtifact, PolicyCurrent
from mixagent.service.server.registry import PolicyEntry, PolicyRegistry

__all__ = ["PolicyVersions"]

log = logging.getLogger(__name__)


class PolicyVersions:
    """The current version of each policy name and the recorded artifacts, over the database."""

    def __init__(self, sessions: sessionmaker[Session], registry: PolicyRegistry, metrics: Metrics,
                 write_lock: threading.Lock | None):
        self.sessions = sessions
        self.registry = registry
        self.metrics = metrics
        self._write_lock = write_lock

    def record(self, entry: PolicyEntry, make_current: bool = True) -> None:
        """Remember a loaded artifact (so restarts and other replicas load it again) and, by
        default, make it the current version of its name for every replica, in one transaction."""
        assert entry.card is not None and entry.path is not None
        now = time.time()
        with self._write_lock or contextlib.nullcontext(), self.sessions.kw["bind"].begin() as conn:
            _upsert(conn, PolicyArtifact, {"name": entry.name, "version": entry.version}, {
                "path": entry.path, "card_json": entry.card.model_dump_json(), "loaded_at": now,
                "digest": entry.digest})
            if make_current:
                _upsert(conn, PolicyCurrent, {"name": entry.name}, {"version": entry.version, "updated_at": now})

    def _load_row(self, row: PolicyArtifact) -> PolicyEntry:
        """Load a recorded artifact from its path; ArtifactError (naming the path) when this replica
        cannot read it or its files differ from the ones recorded."""
        entry = self.registry.find(row.name, row.version)
        if entry is not None:
            return entry
        try:
            entry = self.registry.load(row.path, make_current=False, expect_digest=row.digest)
        except ArtifactError as e:
            raise ArtifactError(f"{row.name}@{row.version} (recorded at {row.path}): {e}") from None
        except OSError as e:
            raise ArtifactError(f"{row.name}@{row.version} (recorded at {row.path}): cannot read it here: "
                                f"{e.strerror or e}") from None
        if (entry.name, entry.version) != (row.name, row.version):
            raise ArtifactError(f"{row.name}@{row.version} (recorded at {row.path}): the folder now holds "
                                f"{entry.ref}")
        return entry

    def recorded(self, name: str, version: str) -> PolicyEntry | None:
        """The loaded entry, else the recorded artifact loaded now (503 when this replica cannot
        read it), else None (nothing recorded under that name and version)."""
        entry = self.registry.find(name, version)
        if entry is not None:
            return entry
        with self.sessions() as s:
            row = s.get(PolicyArtifact, (name, version))
        if row is None:
            return None
        try:
            return self._load_row(row)
        except ArtifactError as e:
            self.metrics.policy_load_failures.inc()
            raise Unavailable(
                f"policy: {e}; this replica cannot serve it. Every replica must read the same artifact at "
                "the same path (mount the policy folder identically) and may then serve it without a restart"
            ) from None

    def resolve(self, name: str, version: str) -> PolicyEntry | None:
        """The loaded entry, or the artifact another replica recorded (loaded without making it
        current here); None when neither can be had (the reason surfaces on the run's next feedback)."""
        try:
            return self.recorded(name, version)
        except Unavailable:
            return None

    def current_version(self, name: str) -> str | None:
        """The version of ``name`` new runs get, as the database says (None: it does not say)."""
        with self.sessions() as s:
            row = s.get(PolicyCurrent, name)
            return row.version if row is not None else None

    def current_versions(self) -> dict[str, str]:
        """Every name's current version: this process's start-up choice overlaid with the database's."""
        with self.sessions() as s:
            rows = s.execute(select(PolicyCurrent.name, PolicyCurrent.version)).all()
        return {**self.registry.current(), **{n: v for n, v in rows}}

    def entry(self, name: str | None, version: str | None = None) -> PolicyEntry:
        """The entry a new run gets for ``name`` (the default when None) at ``version`` (the current
        when None). ContractError (422) names an unknown name or version; :class:`Unavailable`
        (503) when the database names an artifact this replica cannot read."""
        name = name or self.registry.default_name
        if version is None:
            version = self.current_version(name)
            if version is None:
                return self.registry.get(name)
        entry = self.recorded(name, version)
        return entry if entry is not None else self.registry.get(name, version)

    def sync(self) -> list[str]:
        """Load every recorded artifact this process has not loaded yet (at start-up, and before a
        listing, so that listings and ``/readyz`` agree across replicas); none becomes current here:
        the database says which is. Returns the messages of the ones this process cannot load."""
        with self.sessions() as s:
            rows = s.scalars(select(PolicyArtifact).order_by(PolicyArtifact.loaded_at)).all()
        errors = []
        for row in rows:
            if self.registry.find(row.name, row.version) is None:
                try:
                    self._load_row(row)
                except ArtifactError as e:
                    errors.append(str(e))
                    log.error("recorded policy artifact not loaded: %s", e)
        return errors

    def problems(self) -> list[str]:
        """Why this replica cannot serve what new runs get: a current version (per the database) it
        cannot load, a bundled artifact refused at start-up."""
        problems = [f"bundled policy refused: {m}" for m in self.registry.bundled_refused]
        with self.sessions() as s:
            rows = s.execute(select(PolicyCurrent.name, PolicyCurrent.version)).all()
        for name, version in rows:
            try:
                self.recorded(name, version)
            except Unavailable as e:
                problems.append(e.detail)
        return problems


def _upsert(conn: Connection, model: Any, keys: dict[str, Any], values: dict[str, Any]) -> None:
    """Insert or update one row by primary key, atomically (two replicas loading at once both win,
    the later one last)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert  # noqa: PLC0415
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]  # noqa: PLC0415
    stmt = dialect_insert(model).values(**keys, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=values))
