"""On-disk trajectories: one gzipped JSON Lines record per trajectory, plus a dataset card.

Why JSON Lines (not Parquet): a record is appended one stage at a time while a run is in progress;
a truncated last line is detectable on its own; the nested raw contract types (dicts of field
scores and domain losses) map one-to-one onto lines without a columnar schema; and reading needs
nothing beyond the standard library, so the service (which exports runs as trajectories) does not
need pyarrow. gzip keeps a finished record small (≈ 6 KB for 16 stages × 12 domains) and adds a
CRC on top of the record's own checksum.

Layout of a dataset folder::

    DIR/
      card.json                   dataset card (rebuilt from the records; see build_card)
      generate.json               the generation plan's pinned config (setting hash, families, seed, level)
      setting.json                the resolved setting the trajectories were generated with
      records/<id>.jsonl.gz       finished trajectories, one file each (the only files readers accept)
      partial/<id>.jsonl          in-progress records, appended per stage (never accepted; removed on
                                  finalise, discarded by the next run)

A record (schema version :data:`~mixagent.trajectories.contract.SCHEMA_VERSION`) is these lines::

    {"record": "header", "schema_version": 1, "header": {...TrajectoryHeader...}}
    {"record": "start", "feedback": {...}, "wall_s": s}          # evaluation before training
    {"record": "stage", "t": 0, "weights": [...], "feedback": {...}, "wall_s": s}   # × T
    {"record": "end", "stages": T, "sha256": "...", "wall_s": s, "finished_at": "...", "host": "...",
     "provenance": {"corpus": "...", "base": "...", "numerics": "..."},     # provenance: optional
     "method": {"name": "...", "decisions": [...]}}        # a trainer-side method's log: optional

``sha256`` is the checksum of the trajectory's content (:func:`trajectory_checksum`: canonical JSON
of header, history and stage wall times), so it does not depend on line formatting. Finalising
writes the whole record to a temporary sibling, fsyncs it and hard-links it to ``records/<id>.jsonl.gz``
(a link never replaces an existing record): a crash leaves either no record or a complete one.
:func:`read_record` rejects a truncated, corrupted, foreign-version or mis-named record with a
:class:`RecordError` that names the file.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import fcntl
import gzip
import hashlib
import io
import json
import os
import socket
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from pydantic import ValidationError

from mixagent.trajectories.contract import (
    SCHEMA_VERSION,
    ContractError,
    Feedback,
    History,
    Trajectory,
    TrajectoryHeader,
    Weights,
    format_validation_errors,
)
from mixagent.trajectories.environment import FolderEnvironment

__all__ = [
    "RECORD_SUFFIX",
    "RecordError",
    "RecordMeta",
    "StoredTrajectory",
    "TrajectoryStore",
    "FileStore",
    "FolderLock",
    "PartialRecord",
    "trajectory_checksum",
    "record_lines",
    "write_record",
    "read_record",
    "read_trajectory",
    "write_json_atomic",
    "read_json_object",
    "import_jsonl",
    "ImportReport",
    "unfinished",
]

RECORD_SUFFIX = ".jsonl.gz"


class RecordError(ContractError):
    """A stored record is unreadable or does not satisfy the contract; the message names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class RecordMeta:
    """What a record knows beyond the trajectory: total wall time, when and where it finished, and
    the environment's ``provenance`` (corpus and base digests, numerics: ``env/provenance.py``)."""

    wall_s: float = 0.0
    finished_at: str = ""
    host: str = ""
    start_wall_s: float = 0.0
    provenance: dict[str, str] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    """A trainer-side method's record (``env/trainer_side.py``): its name and, per decision, its log
    and the CPU/wall seconds of the model's steps and of its own overhead. Empty for a policy. Like
    the wall times it is outside the trajectory's checksum (timings are not deterministic)."""


@dataclass(frozen=True)
class StoredTrajectory:
    trajectory: Trajectory
    meta: RecordMeta
    path: Path
    sha256: str


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def trajectory_checksum(trajectory: Trajectory) -> str:
    """Full sha256 of the canonical JSON of the trajectory's content."""
    return hashlib.sha256(_dumps(trajectory.model_dump(mode="json")).encode()).hexdigest()


def _header_line(header: TrajectoryHeader) -> str:
    return _dumps({"record": "header", "schema_version": SCHEMA_VERSION, "header": header.model_dump(mode="json")})


def _start_line(feedback: Feedback, wall_s: float) -> str:
    return _dumps({"record": "start", "feedback": feedback.model_dump(mode="json"), "wall_s": wall_s})


def _stage_line(t: int, weights: Weights, feedback: Feedback, wall_s: float) -> str:
    return _dumps(
        {"record": "stage", "t": t, "weights": list(weights.values), "feedback": feedback.model_dump(mode="json"),
         "wall_s": wall_s}
    )


def record_lines(trajectory: Trajectory, meta: RecordMeta) -> list[str]:
    """The lines of a finished record (without newlines)."""
    h = trajectory.history
    lines = [_header_line(trajectory.header), _start_line(h.feedback[0], meta.start_wall_s)]
    for t, w in enumerate(h.weights):
        lines.append(_stage_line(t, w, h.feedback[t + 1], trajectory.stage_wall_s[t]))
    end = {"record": "end", "stages": h.stages, "sha256": trajectory_checksum(trajectory), "wall_s": meta.wall_s,
           "finished_at": meta.finished_at, "host": meta.host}
    if meta.provenance:
        end["provenance"] = meta.provenance
    if meta.method:
        end["method"] = meta.method
    lines.append(_dumps(end))
    return lines


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to a temporary sibling, fsync, move it to ``path``, fsync the folder.
    ``overwrite=False`` moves by hard link, which fails if ``path`` exists (even if another writer
    created it a moment ago), so a finished record is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if overwrite:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise RecordError(path, "a finished record already exists; records are never overwritten") from None
        finally:
            tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``obj`` as JSON to ``path`` atomically and durably (temporary sibling, fsync, rename);
    ``default`` turns values JSON does not know into ones it does (e.g. ``str``)."""
    _write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True, default=default) + "\n").encode())


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file of a dataset folder (card, generate.json), or a RecordError naming it."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RecordError(path, f"unreadable ({e})") from None
    if not isinstance(obj, dict):
        raise RecordError(path, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def unfinished(trajectory: Trajectory) -> str:
    """Why ``trajectory`` is not a finished record ("" when it is): every one of its ``horizon``
    stages has weights and the feedback that followed them."""
    h, horizon = trajectory.history, trajectory.header.horizon
    if len(h.weights) != h.stages:
        return f"in progress: stage {len(h.weights) - 1} has weights but no feedback yet"
    if h.stages != horizon:
        return f"incomplete: {h.stages} stages, header.horizon is {horizon}"
    return ""


def write_record(path: str | Path, trajectory: Trajectory, meta: RecordMeta) -> str:
    """Finalise ``trajectory`` at ``path`` atomically; returns its checksum. Refuses to overwrite
    (the hard link of :func:`_write_atomic` fails on an existing file)."""
    path = Path(path)
    if problem := unfinished(trajectory):
        raise RecordError(path, problem)
    buf = io.BytesIO()
    # mtime=0 and no file name: the same trajectory always gives the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(("\n".join(record_lines(trajectory, meta)) + "\n").encode())
    _write_atomic(path, buf.getvalue(), overwrite=False)
    return trajectory_checksum(trajectory)


def _format_validation(prefix: str, err: ValidationError) -> str:
    return format_validation_errors([{**e, "loc": (prefix, *e["loc"])} for e in err.errors()])[0]


def _parse_lines(path: Path, text: str) -> list[dict[str, Any]]:
    if not text.endswith("\n"):
        raise RecordError(path, "truncated record (the last line is incomplete)")
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(path, f"line {i}: corrupted (not JSON: {e.msg})") from None
        if not isinstance(obj, dict) or "record" not in obj:
            raise RecordError(path, f"line {i}: corrupted (not a record line)")
        out.append(obj)
    return out


def _assemble(path: Path, rows: list[dict[str, Any]], *, finished: bool) -> tuple[Trajectory, RecordMeta, str]:
    """Rebuild the trajectory from parsed lines; ``finished`` requires and checks the end line.
    Returns the trajectory, its record metadata and its stored checksum ("" while in progress)."""
    if not rows:
        raise RecordError(path, "truncated record (empty)")
    first = rows[0]
    if first.get("record") != "header":
        raise RecordError(path, f"line 1: expected the header record, got {first.get('record')!r}")
    version = first.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(
            path, f"schema_version {version!r} is not supported by this reader (it reads version {SCHEMA_VERSION})"
        )
    try:
        header = TrajectoryHeader.model_validate(first.get("header"))
    except ValidationError as e:
        raise RecordError(path, _format_validation("header", e)) from None
    if len(rows) < 2 or rows[1].get("record") != "start":
        raise RecordError(path, "truncated record (no initial evaluation)")
    end = rows[-1] if rows[-1].get("record") == "end" else None
    if finished and end is None:
        raise RecordError(path, f"truncated record (no end line after {len(rows)} lines)")
    stages = rows[2:-1] if end is not None else rows[2:]
    for i, r in enumerate(stages):
        if r.get("record") != "stage" or r.get("t") != i:
            raise RecordError(path, f"line {i + 3}: expected stage t={i}, got {r.get('record')!r} t={r.get('t')!r}")
    try:
        try:
            history = History.model_validate({
                "space": header.space,
                "feedback": [rows[1]["feedback"], *[r["feedback"] for r in stages]],
                "weights": [{"values": r["weights"]} for r in stages],
            })
        except ValidationError as e:  # weights.i / feedback.i: stage i is on line i + 3
            raise RecordError(path, _format_validation("history", e)) from None
        try:
            traj = Trajectory(header=header, history=history, stage_wall_s=[r["wall_s"] for r in stages])
        except ValidationError as e:
            raise RecordError(path, _format_validation("trajectory", e)) from None
    except KeyError as e:
        raise RecordError(path, f"a record line lacks the field {e.args[0]!r}") from None
    if finished and (problem := unfinished(traj)):
        raise RecordError(path, problem)
    if end is not None:
        if end.get("stages") != len(stages):
            raise RecordError(
                path, f"truncated or corrupted: end line says {end.get('stages')} stages, found {len(stages)}"
            )
        if end.get("sha256") != trajectory_checksum(traj):
            raise RecordError(path, "corrupted: the content does not match the record's sha256 checksum")
    end = end or {}
    provenance = end.get("provenance", {})
    if not (isinstance(provenance, dict) and all(isinstance(v, str) for v in provenance.values())):
        raise RecordError(path, f"end line: provenance must be an object of strings, got {provenance!r}")
    method = end.get("method", {})
    if not isinstance(method, dict):
        raise RecordError(path, f"end line: method must be an object, got {type(method).__name__}")
    try:
        meta = RecordMeta(
            wall_s=float(end.get("wall_s", 0.0)),
            finished_at=str(end.get("finished_at", "")),
            host=str(end.get("host", "")),
            start_wall_s=float(rows[1].get("wall_s", 0.0)),
            provenance=provenance,
            method=method,
        )
    except (TypeError, ValueError):
        raise RecordError(path, "corrupted: a wall time is not a number") from None
    return traj, meta, str(end.get("sha256", ""))


def read_record(path: str | Path) -> StoredTrajectory:
    """Read and check one finished record (``.jsonl.gz``; plain ``.jsonl`` is accepted too)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RecordError(path, f"cannot read ({e.strerror})") from None
    try:
        data = gzip.decompress(raw) if path.name.endswith(".gz") else raw
        text = data.decode()
    except EOFError:
        raise RecordError(path, "truncated record (the gzip stream ends early)") from None
    except (OSError, zlib.error, gzip.BadGzipFile) as e:
        raise RecordError(path, f"corrupted (gzip: {e})") from None
    except UnicodeDecodeError:
        raise RecordError(path, "corrupted (not UTF-8 text)") from None
    traj, meta, sha = _assemble(path, _parse_lines(path, text), finished=True)
    expected = path.name.removesuffix(RECORD_SUFFIX).removesuffix(".jsonl")
    if traj.header.trajectory_id != expected:
        raise RecordError(path, f"header.trajectory_id {traj.header.trajectory_id!r} does not match the file name")
    return StoredTrajectory(traj, meta, path, sha)


def read_trajectory(path: str | Path) -> Trajectory:
    return read_record(path).trajectory


class PartialRecord:
    """An in-progress record, appended (and flushed) one line per stage. Never read as a result."""

    def __init__(self, path: str | Path, header: TrajectoryHeader):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w")  # a stale partial of the same id is discarded
        self._t = 0
        self._append(_header_line(header))

    def _append(self, line: str) -> None:
        self._f.write(line + "\n")
        self._f.flush()

    def start(self, feedback: Feedback, wall_s: float) -> None:
        self._append(_start_line(feedback, wall_s))

    def stage(self, weights: Weights, feedback: Feedback, wall_s: float) -> None:
        self._append(_stage_line(self._t, weights, feedback, wall_s))
        self._t += 1

    def close(self) -> None:
        self._f.close()


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def default_meta(wall_s: float, start_wall_s: float, provenance: dict[str, str] | None = None, *,
                 method: dict[str, Any] | None = None) -> RecordMeta:
    return RecordMeta(wall_s=wall_s, finished_at=now_iso(), host=socket.gethostname(), start_wall_s=start_wall_s,
                      provenance=dict(provenance or {}), method=dict(method or {}))


class FolderLock:
    """The writer's lock of a dataset folder (``DIR/.lock``; the kernel releases it when the process
    dies): generation, import and card rewrites never interleave in one folder."""

    def __init__(self, root: Path, purpose: str):
        self.path = Path(root) / ".lock"
        self.purpose = purpose
        self._f: Any = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            raise RecordError(
                self.path, f"another writer (e.g. `trajectories generate`) holds this folder; cannot {self.purpose} now"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


class TrajectoryStore(Protocol):
    """Where finished trajectories live: write once, read, list."""

    def write(self, trajectory: Trajectory, meta: RecordMeta) -> Path: ...

    def read(self, trajectory_id: str) -> StoredTrajectory: ...

    def list(self) -> list[str]: ...


@dataclass
class FileStore:
    """A dataset folder (layout in the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def partial(self) -> Path:
        return self.root / "partial"

    def lock(self, purpose: str) -> FolderLock:
        return FolderLock(self.root, purpose)

    def path_of(self, trajectory_id: str) -> Path:
        return self.records / f"{trajectory_id}{RECORD_SUFFIX}"

    def list(self) -> list[str]:
        """Ids of the finished records (by file name; :meth:`read` checks each)."""
        if not self.records.is_dir():
            return []
        return sorted(p.name.removesuffix(RECORD_SUFFIX) for p in self.records.glob(f"*{RECORD_SUFFIX}")
                      if not p.name.startswith("."))

    def write(self, trajectory: Trajectory, meta: RecordMeta) -> Path:
        path = self.path_of(trajectory.header.trajectory_id)
        write_record(path, trajectory, meta)
        (self.partial / f"{trajectory.header.trajectory_id}.jsonl").unlink(missing_ok=True)
        return path

    def read(self, trajectory_id: str) -> StoredTrajectory:
        return read_record(self.path_of(trajectory_id))

    def iter_checked(self) -> Iterator[StoredTrajectory | RecordError]:
        """Every record in id order: the stored trajectory, or the error that rejects it."""
        for tid in self.list():
            try:
                yield self.read(tid)
            except RecordError as e:
                yield e

    def load_all(self) -> builtins.list[StoredTrajectory]:
        """Every record; raises the first :class:`RecordError`."""
        out = []
        for r in self.iter_checked():
            if isinstance(r, RecordError):
                raise r
            out.append(r)
        return out

    def partial_ids(self) -> builtins.list[str]:
        if not self.partial.is_dir():
            return []
        return sorted(p.name.removesuffix(".jsonl") for p in self.partial.glob("*.jsonl"))

    def stale_temporaries(self) -> builtins.list[Path]:
        """Temporary files a crash left behind mid-finalise (never valid records)."""
        if not self.records.is_dir():
            return []
        return sorted(self.records.glob(".*.tmp*"))

    def read_partial(self, trajectory_id: str) -> Trajectory:
        """The stages an in-progress record has so far (for inspection only)."""
        path = self.partial / f"{trajectory_id}.jsonl"
        text = path.read_text()
        lines = text[: text.rfind("\n") + 1] if "\n" in text else ""
        return _assemble(path, _parse_lines(path, lines), finished=False)[0]


class ImportReport(NamedTuple):
    imported: int
    skipped: int
    """Already stored with the same content."""
    unfinished: list[str]
    """``line i: <id> is <why>`` for runs that did not reach their horizon (left out)."""


def import_jsonl(path: str | Path, store: FileStore, *, setting_hash: str | None = None,
                 environment: FolderEnvironment | None = None) -> ImportReport:
    """Finalise every finished trajectory of a JSON Lines file of ``Trajectory`` objects (one per
    line, e.g. a service export) as records of ``store``. An id already stored with the same content
    is skipped; with other content it is an error (records are never overwritten). Runs that did not
    reach their horizon are left out and listed; a line that is not a trajectory fails the import
    before anything is written, and so does one whose ``header.setting_hash`` is not ``setting_hash``
    (the folder's pinned setting, when it has one), and so does one that ``environment`` (a generated
    folder's) does not admit: a run from another base model would make the folder refuse to grow."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RecordError(path, f"cannot read ({e.strerror})") from None
    trajectories: list[Trajectory] = []
    left_out: list[str] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            t = Trajectory.model_validate_json(line)
        except ValidationError as e:
            raise RecordError(path, f"line {i}: " + _format_validation("trajectory", e)) from None
        if setting_hash is not None and t.header.setting_hash != setting_hash:
            raise RecordError(path, f"line {i}: header.setting_hash {t.header.setting_hash!r} is not the setting "
                                    f"{setting_hash!r} of {store.root} (a folder holds one setting)")
        problem = unfinished(t)
        if problem:  # a live or abandoned run: not a dataset record, but not an error in the file
            left_out.append(f"line {i}: {t.header.trajectory_id} is {problem}")
            continue
        trajectories.append(t)
    stored = set(store.list())
    new = []
    for t in trajectories:
        tid = t.header.trajectory_id
        if tid in stored:
            if store.read(tid).sha256 != trajectory_checksum(t):
                raise RecordError(store.path_of(tid), f"already holds a different trajectory than {path}")
        else:
            if environment is not None:
                environment.admit(t, {})
            new.append(t)
    for t in new:
        store.write(t, RecordMeta(wall_s=float(sum(t.stage_wall_s)), finished_at=now_iso(), host=f"import:{path.name}"))
    return ImportReport(len(new), len(trajectories) - len(new), left_out)
