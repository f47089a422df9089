"""Build a multi-domain corpus of real text: documents per domain, deduplicated, split per
document into train and held-out parts, with a manifest. Cached by the setting's corpus hash, so a
second build does nothing.

Layout of ``<cache>/corpus/<corpus_hash>/``::

    manifest.json            # per domain: field, source kind/package/version, docs, bytes, sha256
    <domain>.train.jsonl     # one {"text": ...} per document
    <domain>.heldout.jsonl
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mixagent.env.cache import atomic_dir, build_lock, cache_root, file_sha256, write_json_atomic
from mixagent.env.near_duplicates import containments, shingles
from mixagent.env.setting import Setting
from mixagent.env.sources import open_source, read_text_file, split_documents

__all__ = ["build_corpus", "read_documents", "corpus_dir", "CorpusError"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class CorpusError(RuntimeError):
    """The corpus cannot be built as the setting asks (the message names the domain)."""


def corpus_dir(setting: Setting, root: Path | None = None) -> Path:
    return cache_root(root) / "corpus" / setting.corpus_hash()


def _doc_key(doc: str) -> str:
    """Dedup key: case and whitespace do not make two documents different."""
    norm = re.sub(r"\s+", " ", doc.strip().lower())
    return hashlib.sha1(norm.encode()).hexdigest()


def _heldout(key: str, fraction: float) -> bool:
    """Deterministic per-document split: the key's hash decides, so a document is never in both."""
    return int(key[:8], 16) / 0xFFFFFFFF < fraction


def _write_jsonl(path: Path, docs: list[str]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")


def read_documents(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def _collect_domain(
    name: str, setting: Setting, root: Path, seen: set[str], say: Progress
) -> tuple[list[str], list[str], dict[str, Any]]:
    spec = setting.corpus
    info = open_source(spec.domains[name], root)
    # A seeded file order spreads the documents over the whole package (not just the first folder)
    # and does not depend on the episode seed.
    order = np.random.default_rng(int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)).permutation(
        len(info.files)
    )
    train: list[str] = []
    heldout: list[str] = []
    train_bytes = heldout_bytes = dups = 0
    for i in order:
        if train_bytes >= spec.max_train_bytes and heldout_bytes >= spec.max_heldout_bytes:
            break
        path = info.files[int(i)]
        try:
            texts = list(read_text_file(path, info.reader))
        except (OSError, ValueError, UnicodeError, KeyError, zlib.error) as e:
            log.warning("domain %s: skipping unreadable %s (%s)", name, path, e)
            continue
        for _, text in texts:
            for doc in split_documents(text, spec.doc_chars, spec.min_doc_chars):
                key = _doc_key(doc)
                if key in seen:
                    dups += 1
                    continue
                seen.add(key)
                size = len(doc.encode())
                if _heldout(key, spec.heldout_fraction):
                    if heldout_bytes < spec.max_heldout_bytes:
                        heldout.append(doc)
                        heldout_bytes += size
                elif train_bytes < spec.max_train_bytes:
                    train.append(doc)
                    train_bytes += size
    near = 0
    if spec.heldout_near_duplicates is not None and heldout:
        scores = containments([shingles(d) for d in train], [shingles(d) for d in heldout])
        kept = [d for d, c in zip(heldout, scores, strict=True) if c < spec.heldout_near_duplicates]
        near = len(heldout) - len(kept)
        heldout = kept
    if not train or not heldout:
        raise CorpusError(
            f"domain {name}: source {info.origin} gave {len(train)} train and {len(heldout)} "
            "held-out documents; it needs at least one of each"
        )
    say(f"{name}: {len(train)} train / {len(heldout)} held-out docs, {train_bytes:,} train bytes, "
        f"{dups} duplicates dropped" + (f", {near} held-out near-duplicates of train dropped" if near else ""))
    meta = {
        "source_kind": info.kind,
        "source": info.origin,
        "version": info.version,
        "files_available": len(info.files),
        "duplicates_dropped": dups,
        **({"heldout_near_duplicates_dropped": near} if spec.heldout_near_duplicates is not None else {}),
    }
    return train, heldout, meta


def build_corpus(setting: Setting, root: Path | None = None, say: Progress | None = None) -> Path:
    """Build (or find cached) the corpus of ``setting``; returns its folder."""
    say = say or log.info
    final = corpus_dir(setting, root)
    with build_lock(final):
        if (final / "manifest.json").exists():
            say(f"corpus {setting.corpus_hash()} is cached at {final}")
            return final
        return _build(setting, final, root, say)


def _build(setting: Setting, final: Path, root: Path | None, say: Progress) -> Path:
    t0 = time.time()
    seen: set[str] = set()
    entries = []
    # A bar on a terminal (off when stderr is piped: the command prints a line per domain there)
    with atomic_dir(final) as tmp, tqdm(list(setting.corpus.domains), desc=f"corpus {setting.name}", unit="domain",
                                        dynamic_ncols=True, disable=None) as bar:
        for name in bar:  # fetching and extracting a package takes seconds each: show which one
            bar.set_postfix_str(name)
            train, heldout, meta = _collect_domain(name, setting, cache_root(root), seen, say)
            _write_jsonl(tmp / f"{name}.train.jsonl", train)
            _write_jsonl(tmp / f"{name}.heldout.jsonl", heldout)
            entries.append(
                {
                    "domain": name,
                    **meta,
                    "train_docs": len(train),
                    "heldout_docs": len(heldout),
                    "train_bytes": sum(len(d.encode()) for d in train),
                    "heldout_bytes": sum(len(d.encode()) for d in heldout),
                    "train_sha256": file_sha256(tmp / f"{name}.train.jsonl"),
                    "heldout_sha256": file_sha256(tmp / f"{name}.heldout.jsonl"),
                }
            )
        write_json_atomic(
            tmp / "manifest.json",
            {
                "corpus_hash": setting.corpus_hash(),
                "spec": setting.corpus.identity(),
                "domains": entries,
                "build_seconds": round(time.time() - t0, 1),
            },
        )
    say(f"corpus built in {time.time() - t0:.0f}s at {final}")
    return final
