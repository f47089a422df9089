"""Shared fixtures: a small generated multi-domain corpus (no network) and a tiny setting on it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

DOMAINS = {"src_a": "source", "src_b": "source", "tgt_a": "target", "tgt_b": "target"}


def write_synthetic_corpus(root: Path, n_files: int = 24, seed: int = 0) -> None:
    """Each domain is its own little language: a seeded pseudo-word vocabulary over a distinct
    alphabet and a first-order Markov chain over those words, so domains differ measurably and a
    model trained on one forgets another."""
    rng = np.random.default_rng(seed)
    alphabets = ["abcdefgh", "ijklmnop", "qrstuvwx", "yzaeiouk"]
    for k, name in enumerate(DOMAINS):
        letters = alphabets[k]
        words = ["".join(rng.choice(list(letters), size=rng.integers(2, 6))) for _ in range(60)]
        trans = rng.dirichlet(np.full(len(words), 0.1), size=len(words))
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_files):
            w = int(rng.integers(len(words)))
            paras = []
            for _ in range(8):
                line = []
                for _ in range(60):
                    w = int(rng.choice(len(words), p=trans[w]))
                    line.append(words[w])
                paras.append(" ".join(line) + ".")
            (d / f"doc{i:03d}.txt").write_text("\n\n".join(paras) + "\n")


def run_mixagent(
    *args: str, missing: Sequence[str] = (), env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``mixagent ARGS`` in a fresh interpreter as a shell runs it: through ``app()``, with stdout and
    stderr piped (not terminals). The ``missing`` modules are made unimportable first
    (``sys.modules[m] = None``), as on an install without the extra that provides them."""
    code = (
        "import sys\n"
        f"for m in {list(missing)!r}: sys.modules[m] = None\n"
        "from mixagent.cli import app\n"
        f"sys.argv = ['mixagent', *{list(args)!r}]\n"
        "app()\n"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("TERMINAL_WIDTH", "COLUMNS")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**base, **(env or {})}, cwd=REPO)


def tiny_setting_dict(corpus_root: Path, **overrides) -> dict:
    s = {
        "name": "synthetic-tiny",
        "seed": 0,
        "corpus": {
            "domains": {n: {"kind": "files", "root": str(corpus_root / n), "include": ["*.txt"]} for n in DOMAINS},
            "max_train_bytes": 60_000,
            "max_heldout_bytes": 20_000,
            "heldout_fraction": 0.2,
            "doc_chars": 800,
            "min_doc_chars": 100,
        },
        "fields": {"source": ["src_a", "src_b"], "target": ["tgt_a", "tgt_b"]},
        "tokenizer": {"kind": "bpe", "vocab_size": 300, "train_bytes_per_domain": 30_000},
        "model": {"kind": "llama", "n_layer": 1, "n_head": 2, "d_model": 32},
        "pretrain": {"steps": 60, "lr": 0.01, "warmup_steps": 5, "batch_size": 8},
        "cpt": {"interval": 4, "horizon": 5, "batch_size": 8, "seq_len": 32, "lr": 0.01, "warmup_steps": 2},
        "eval": {"windows_per_domain": 4, "batch_size": 16},
    }
    for k, v in overrides.items():
        s[k] = v
    return s


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session; MIXAGENT_HOME points at it while the session runs."""
    d = tmp_path_factory.mktemp("mixagent-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("MIXAGENT_HOME", str(d))
    yield d
    mp.undo()


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic-corpus")
    write_synthetic_corpus(root)
    return root


@pytest.fixture(scope="session")
def tiny_setting(corpus_root, cache_dir):
    from mixagent.env.setting import load_setting

    return load_setting(tiny_setting_dict(corpus_root))


@pytest.fixture(scope="session")
def tiny_setting_file(corpus_root, cache_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("settings") / "synthetic-tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_setting_dict(corpus_root)))
    return path


@pytest.fixture(scope="session")
def tiny_backend(tiny_setting, cache_dir):
    from mixagent.env.base import build_backend

    backend, _ = build_backend(tiny_setting, cache_dir, progress=False)
    return backend


@pytest.fixture()
def tiny_env(tiny_setting, tiny_backend):
    from mixagent.env.mixing_env import DataMixingEnv

    return DataMixingEnv(tiny_setting, backend=tiny_backend)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_setting, cache_dir, tmp_path_factory) -> Path:
    """A real dataset: the first 9 plan items (one per built-in family) on the tiny setting."""
    from mixagent.agent.generate import GenerateConfig, generate

    out = tmp_path_factory.mktemp("dataset") / "tiny"
    generate(GenerateConfig(out=out, n=9, threads=1, cache_dir=cache_dir, progress=False), tiny_setting)
    return out
