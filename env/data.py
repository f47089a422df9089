"""Tokenised domain data: a byte-level BPE trained on the corpus (or a checkpoint's own tokenizer),
and per-domain token arrays for the train and held-out parts. Cached by the setting's data hash.

Layout of ``<cache>/data/<data_hash>/``::

    manifest.json                 # the corpus manifest + tokens per domain and split
    tokenizer.json                # only for `tokenizer.kind: bpe`
    <domain>.train.npy            # uint16/uint32 token ids, documents joined by the EOS token
    <domain>.heldout.npy
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.env.cache import atomic_dir, build_lock, cache_root, write_json_atomic
from mixagent.env.corpus import build_corpus, read_documents
from mixagent.env.model import load_pretrained_tokenizer
from mixagent.env.setting import Setting

__all__ = ["DomainTokens", "prepare_data", "EOS_TOKEN"]

log = logging.getLogger(__name__)
EOS_TOKEN = "<|endoftext|>"


@dataclass
class DomainTokens:
    """All token data of one setting, in memory."""

    folder: Path
    vocab_size: int
    eos_id: int
    train: dict[str, np.ndarray] = field(default_factory=dict)
    heldout: dict[str, np.ndarray] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


def _train_bpe(setting: Setting, corpus: Path, out: Path) -> Any:
    # lazy: the tokenizers library loads only when a BPE is trained (a cached corpus needs none)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415

    budget = setting.tokenizer.train_bytes_per_domain

    def texts() -> Any:
        for name in setting.corpus.domains:
            used = 0
            for doc in read_documents(corpus / f"{name}.train.jsonl"):
                if used >= budget:
                    break
                used += len(doc)
                yield doc

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=setting.tokenizer.vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    tok.save(str(out))
    return tok


def _encode_docs(encode_batch: Any, docs: list[str], eos_id: int, dtype: type) -> np.ndarray:
    ids: list[int] = []
    for start in range(0, len(docs), 256):
        for enc in encode_batch(docs[start : start + 256]):
            ids.extend(enc)
            ids.append(eos_id)
    return np.asarray(ids, dtype=dtype)


def _tokenize(setting: Setting, final: Path, root: Path | None, say: Any) -> None:
    corpus = build_corpus(setting, root, say)
    t0 = time.time()
    with atomic_dir(final) as tmp:
        if setting.tokenizer.kind == "bpe":
            tok = _train_bpe(setting, corpus, tmp / "tokenizer.json")
            eos_id = tok.token_to_id(EOS_TOKEN)
            vocab = tok.get_vocab_size()

            def encode_batch(batch: list[str]) -> list[list[int]]:
                return [e.ids for e in tok.encode_batch(batch)]

        else:
            hf_tok = load_pretrained_tokenizer(setting.model)  # type: ignore[arg-type]  # kind "pretrained" implies a PretrainedSpec (setting validator)
            eos_id = hf_tok.eos_token_id if hf_tok.eos_token_id is not None else 0
            vocab = len(hf_tok)

            def encode_batch(batch: list[str]) -> list[list[int]]:
                return hf_tok(batch, add_special_tokens=False)["input_ids"]

        dtype = np.uint16 if vocab <= 65535 else np.uint32
        corpus_manifest = json.loads((corpus / "manifest.json").read_text())
        domains = []
        for entry in corpus_manifest["domains"]:
            name = entry["domain"]
            counts = {}
            for split in ("train", "heldout"):
                arr = _encode_docs(encode_batch, read_documents(corpus / f"{name}.{split}.jsonl"), eos_id, dtype)
                np.save(tmp / f"{name}.{split}.npy", arr)
                counts[f"{split}_tokens"] = int(arr.size)
            domains.append({**entry, **counts})
            say(f"{name}: {counts['train_tokens']:,} train / {counts['heldout_tokens']:,} held-out tokens")
        write_json_atomic(
            tmp / "manifest.json",
            {
                "data_hash": setting.data_hash(),
                "corpus_hash": setting.corpus_hash(),
                "tokenizer": setting.tokenizer.model_dump(),
                "vocab_size": vocab,
                "eos_id": eos_id,
                "domains": domains,
                "tokenize_seconds": round(time.time() - t0, 1),
            },
        )
    say(f"tokenised in {time.time() - t0:.0f}s at {final}")


def prepare_data(setting: Setting, root: Path | None = None, say: Any = None) -> DomainTokens:
    """Build (or load cached) corpus, tokenizer and token arrays for ``setting``."""
    say = say or log.info
    final = cache_root(root) / "data" / setting.data_hash()
    with build_lock(final):
        if not (final / "manifest.json").exists():
            _tokenize(setting, final, root, say)
    manifest = json.loads((final / "manifest.json").read_text())
    data = DomainTokens(final, int(manifest["vocab_size"]), int(manifest["eos_id"]), manifest=manifest)
    for name in setting.corpus.domains:
        data.train[name] = np.load(final / f"{name}.train.npy")
        data.heldout[name] = np.load(final / f"{name}.heldout.npy")
    return data
