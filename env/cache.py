"""Where built artefacts (packages, corpora, tokens, base checkpoints) are cached, and how they are
written: into a temporary sibling first, then renamed, so a crash never leaves a half-built entry
that a later run would mistake for a finished one."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mixagent.trajectories.storage import write_json_atomic as _write_json_atomic

__all__ = ["cache_root", "atomic_dir", "build_lock", "write_json_atomic", "file_sha256"]


def cache_root(override: str | Path | None = None) -> Path:
    """``override``, else ``$MIXAGENT_HOME``, else ``~/.cache/mixagent``."""
    root = Path(override or os.environ.get("MIXAGENT_HOME") or Path.home() / ".cache" / "mixagent")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``final`` only if the block finishes without error."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists():
            raise
        # Another process finished the same entry first (same content by construction): keep theirs.


@contextmanager
def build_lock(final: Path) -> Iterator[None]:
    """Hold an exclusive lock while building ``final``, so parallel workers on a cold cache build
    each entry once and the others wait, then find it built."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with (final.parent / f".{final.name}.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Cache metadata (manifests, pre-training reports) as JSON, atomically and durably; values JSON
    does not know (paths) are written as strings."""
    _write_json_atomic(path, obj, default=str)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
