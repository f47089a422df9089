"""How much of each domain's held-out text is (nearly) in its training text?

The corpus splits documents by hash after exact deduplication, so no held-out document is *in* train,
but near-duplicates (a licence with another year, a chatterbot conversation repeated in another
file, boilerplate headers) still leak: a model that memorises them looks better on held-out text
than it generalises. This measures the leak per domain: for every held-out document, the largest
share of its word 5-grams found in any single training document (containment), and the fraction
of held-out documents with a containment of at least ``--threshold``.

    python bench/heldout_overlap.py                        # the default setting (math-tiny)
    python bench/heldout_overlap.py --setting code-tiny --threshold 0.8

Needs the built corpus (``mixagent corpus build --setting ...``; the cache is $MIXAGENT_HOME).
Prints a table and writes bench/results/heldout_overlap.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import UTC, datetime
from pathlib import Path

from mixagent.env.cache import cache_root
from mixagent.env.corpus import corpus_dir, read_documents
from mixagent.env.near_duplicates import containments, shingles
from mixagent.env.setting import load_setting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default=None, help="setting file or name (default: math-tiny)")
    ap.add_argument("--k", type=int, default=5, help="words per shingle")
    ap.add_argument("--threshold", type=float, default=0.5, help="containment that counts as a near-duplicate")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "heldout_overlap.json")
    args = ap.parse_args()

    setting = load_setting(args.setting)
    folder = corpus_dir(setting, cache_root())
    if not folder.is_dir():
        raise SystemExit(
            f"{folder}: corpus not built; run `mixagent corpus build --setting {args.setting or 'math-tiny'}`"
        )
    rows = []
    print(f"{'domain':<12} {'field':<7} {'held':>5} {'train':>6} {'near-dup':>9} {'mean max':>9} {'median':>7}")
    for d in setting.space.domains:
        train = [shingles(x, args.k) for x in read_documents(folder / f"{d.name}.train.jsonl")]
        held = [shingles(x, args.k) for x in read_documents(folder / f"{d.name}.heldout.jsonl")]
        c = containments(train, held)
        row = {
            "domain": d.name, "field": d.field, "heldout_docs": len(held), "train_docs": len(train),
            "near_duplicate_fraction": sum(x >= args.threshold for x in c) / len(c),
            "mean_max_containment": statistics.fmean(c), "median_max_containment": statistics.median(c),
        }
        rows.append(row)
        print(f"{d.name:<12} {d.field:<7} {len(held):>5} {len(train):>6} {row['near_duplicate_fraction']:>9.2f} "
              f"{row['mean_max_containment']:>9.2f} {row['median_max_containment']:>7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "setting": setting.name, "setting_hash": setting.hash(), "k": args.k, "threshold": args.threshold,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "domains": rows,
    }, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
