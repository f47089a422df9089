import json
import shutil

import numpy as np
import pytest

from mixagent.env.corpus import CorpusError, build_corpus, read_documents
from mixagent.env.data import prepare_data
from mixagent.env.setting import DebSource, load_setting
from mixagent.env.sources import SourceError, open_source, split_documents
from tests.conftest import tiny_setting_dict


def test_split_documents_cuts_at_blank_lines_and_drops_stubs():
    text = "\n\n".join(f"para {i} " + "x" * 90 for i in range(10)) + "\n\nshort"
    docs = split_documents(text, doc_chars=250, min_chars=50)
    assert len(docs) == 5  # two 98-char paragraphs fit in 250 characters, three do not
    assert all(d.startswith("para") and len(d) <= 250 for d in docs)
    assert "short" in docs[-1]  # the tail joins the last document rather than being lost
    long_para = "\n".join("line " + "y" * 50 for _ in range(100))
    assert max(len(d) for d in split_documents(long_para, 500, 10)) <= 500


def test_corpus_is_split_per_document_deduplicated_and_cached(tmp_path, corpus_root):
    # Duplicate a file into another domain and inside its own domain: each document is kept once.
    root = tmp_path / "corpus"
    shutil.copytree(corpus_root, root)
    shutil.copy(root / "src_a" / "doc000.txt", root / "src_a" / "dup.txt")
    shutil.copy(root / "src_a" / "doc001.txt", root / "tgt_b" / "stolen.txt")
    setting = load_setting(tiny_setting_dict(root))
    cache = tmp_path / "cache"
    folder = build_corpus(setting, cache)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sum(e["duplicates_dropped"] for e in manifest["domains"]) >= 2
    all_docs: list[str] = []
    for e in manifest["domains"]:
        train = read_documents(folder / f"{e['domain']}.train.jsonl")
        held = read_documents(folder / f"{e['domain']}.heldout.jsonl")
        assert not set(train) & set(held), "a document is in both splits"
        assert e["train_docs"] == len(train) and e["heldout_docs"] == len(held) > 0
        assert e["train_bytes"] == sum(len(d.encode()) for d in train)
        assert len(e["train_sha256"]) == 64 and e["source_kind"] == "files"
        all_docs += train + held
    assert len(all_docs) == len(set(all_docs)), "a duplicate survived"
    # Cached: a second build touches nothing.
    mtime = (folder / "manifest.json").stat().st_mtime_ns
    messages: list[str] = []
    assert build_corpus(setting, cache, messages.append) == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == mtime
    assert messages and "cached" in messages[0]


def test_tokens_and_manifest(tiny_setting, cache_dir):
    data = prepare_data(tiny_setting, cache_dir)
    assert data.vocab_size == 300
    for e in data.manifest["domains"]:
        name = e["domain"]
        assert e["train_tokens"] == data.train[name].size > 1000
        assert e["heldout_tokens"] == data.heldout[name].size > 0
        assert data.train[name].dtype == np.uint16
        assert data.train[name].max() < data.vocab_size
        assert (data.train[name] == data.eos_id).sum() == e["train_docs"]  # one EOS per document
    assert (data.folder / "tokenizer.json").exists()


def test_missing_package_is_named(tmp_path):
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get")
    with pytest.raises(SourceError, match="package mixagent-no-such-package-xyz"):
        open_source(DebSource(package="mixagent-no-such-package-xyz", include=("*",)), tmp_path)


def test_empty_source_folder_is_named(tmp_path, corpus_root):
    empty = tmp_path / "empty"
    empty.mkdir()
    d = tiny_setting_dict(corpus_root)
    d["corpus"]["domains"]["tgt_b"] = {"kind": "files", "root": str(empty)}
    with pytest.raises(SourceError, match=f"no file under {empty}"):
        build_corpus(load_setting(d), tmp_path / "cache")


def test_domain_without_heldout_documents_is_an_error(tmp_path, corpus_root):
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text("word " * 100)
    d = tiny_setting_dict(corpus_root)
    d["corpus"]["domains"]["tgt_b"] = {"kind": "files", "root": str(one)}
    with pytest.raises(CorpusError, match="domain tgt_b"):
        build_corpus(load_setting(d), tmp_path / "cache")


def test_a_corpus_build_shows_its_progress_per_domain(tiny_setting, tmp_path, monkeypatch):
    """Fetching and extracting takes seconds per domain (~80 s for math-tiny): on a terminal the build
    shows a bar naming the domain it is at (piped, the command prints a line per domain instead)."""
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    build_corpus(tiny_setting, tmp_path)
    shown = screen.getvalue()
    assert f"corpus {tiny_setting.name}" in shown and f"{len(tiny_setting.space.names)}/" in shown, shown
    assert all(name in shown for name in tiny_setting.space.names)


def test_near_duplicates_of_training_text_are_kept_out_of_held_out(tmp_path, corpus_root):
    """Each src_a file gets a copy with one word changed per paragraph (a licence with another year):
    exact dedup keeps both, so copies land on both sides of the split; with the threshold set no
    held-out document shares half of its 5-grams with one training document."""
    from mixagent.env.near_duplicates import containments, shingles

    root = tmp_path / "corpus"
    shutil.copytree(corpus_root, root)
    for f in sorted((root / "src_a").glob("doc*.txt")):
        paras = f.read_text().split("\n\n")
        (root / "src_a" / f"copy-{f.name}").write_text("\n\n".join(f"year {i} " + p for i, p in enumerate(paras)))

    def leak(threshold: float | None) -> tuple[float, dict]:
        d = tiny_setting_dict(root)
        d["corpus"] = {**d["corpus"], "max_train_bytes": 400_000, "max_heldout_bytes": 400_000}
        if threshold is not None:
            d["corpus"]["heldout_near_duplicates"] = threshold
        setting = load_setting(d)
        folder = build_corpus(setting, tmp_path / f"cache-{threshold}")
        train = [shingles(x) for x in read_documents(folder / "src_a.train.jsonl")]
        held = [shingles(x) for x in read_documents(folder / "src_a.heldout.jsonl")]
        entry = next(e for e in json.loads((folder / "manifest.json").read_text())["domains"] if e["domain"] == "src_a")
        return max(containments(train, held)), entry

    worst, entry = leak(None)
    assert worst >= 0.5 and "heldout_near_duplicates_dropped" not in entry
    worst, entry = leak(0.5)
    assert worst < 0.5 and entry["heldout_near_duplicates_dropped"] > 0


def test_an_unset_near_duplicate_threshold_leaves_the_setting_hash_alone(corpus_root):
    base = load_setting(tiny_setting_dict(corpus_root))
    d = tiny_setting_dict(corpus_root)
    d["corpus"] = {**d["corpus"], "heldout_near_duplicates": 0.5}
    strict = load_setting(d)
    assert "heldout_near_duplicates" not in base.corpus.identity()
    assert strict.hash() != base.hash() and strict.corpus_hash() != base.corpus_hash()
    assert load_setting("math-tiny").hash() == "a0b1b781e52bace1"  # the frozen dataset's setting


def test_the_own_corpus_example_builds_from_local_folders(tmp_path):
    """configs/example-own-corpus.yaml (docs/own-corpus.md): four domains from this repository's own
    folders, resolved relative to the setting file, with the near-duplicate-aware split."""
    from pathlib import Path

    setting = load_setting(Path(__file__).resolve().parents[2] / "configs" / "example-own-corpus.yaml")
    assert list(setting.space.names) == ["docs", "agent", "service", "tests"]
    assert setting.space.priors() == pytest.approx([1 / 6, 2 / 6, 2 / 6, 1 / 6])
    folder = build_corpus(setting, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    by = {e["domain"]: e for e in manifest["domains"]}
    assert by["agent"]["source"].endswith("/agent") and by["tests"]["heldout_docs"] > 0
    assert all("heldout_near_duplicates_dropped" in e for e in by.values())
