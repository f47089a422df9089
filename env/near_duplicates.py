"""Near-duplicate detection between held-out and training documents (word 5-gram containment).

Exact deduplication keeps every held-out document out of train, but near-duplicates (a licence
with another year, a chatterbot conversation repeated in another file, boilerplate headers) still
leak: a model that memorises them looks better on held-out text than it generalises. The corpus
builder drops held-out documents at or above a containment threshold
(``CorpusSpec.heldout_near_duplicates``); ``bench/heldout_overlap.py`` measures the leak.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["SHINGLE_WORDS", "shingles", "containments"]

SHINGLE_WORDS = 5
_WORD = re.compile(r"\w+")


def shingles(text: str, k: int = SHINGLE_WORDS) -> set[str]:
    """The document's word ``k``-grams (lower-cased)."""
    words = _WORD.findall(text.lower())
    return {" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}


def containments(train: Sequence[set[str]], heldout: Sequence[set[str]]) -> list[float]:
    """For each held-out shingle set, the largest share of it found in one training document,
    ``max_t |h ∩ t| / |h|`` (an inverted index over the training shingles)."""
    index: dict[str, list[int]] = {}
    for i, t in enumerate(train):
        for g in t:
            index.setdefault(g, []).append(i)
    out = []
    for h in heldout:
        hits = Counter(i for g in h for i in index.get(g, ()))
        out.append(max(hits.values(), default=0) / max(len(h), 1))
    return out
