"""Pinned inputs (env/pinned.py): a pin carries a setting's tokens and base weights to another cache
bit for bit, replaces a differing build there (kept aside), and refuses what does not belong."""

from __future__ import annotations

import lzma

import pytest

from mixagent.env.pinned import PinError, install_pin, pin_setting, read_pin
from mixagent.env.setting import load_setting
from tests.conftest import tiny_setting_dict


@pytest.fixture(scope="module")
def pin(tiny_setting, tiny_backend, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pins") / "synthetic-tiny"
    pin_setting(tiny_setting, out, cache_dir, say=lambda _: None)
    return out


def _tree(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_pin_installs_the_same_tokens_and_weights_into_another_cache(pin, tiny_setting, cache_dir, tmp_path):
    from mixagent.env.base import build_backend
    from mixagent.env.provenance import weights_digest

    meta = read_pin(pin)
    assert meta["data_hash"] == tiny_setting.data_hash() and meta["base_hash"] == tiny_setting.base_hash()
    assert set(meta["files"]["base"]) >= {"model.safetensors", "pretrain.json"}
    assert meta["provenance"]["corpus"] and meta["provenance"]["packages"]
    assert "torch" in meta["provenance"]["pinned_on"]  # the CPU and kernels of the machine that pinned
    other = tmp_path / "cache"
    assert install_pin(pin, tiny_setting, other, say=lambda _: None) is True
    for part, name in (("data", tiny_setting.data_hash()), ("base", tiny_setting.base_hash())):
        assert _tree(other / part / name) == _tree(cache_dir / part / name)
    assert install_pin(pin, tiny_setting, other, say=lambda _: None) is False  # already there: nothing written
    mine, _ = build_backend(tiny_setting, cache_dir, progress=False)
    theirs, _ = build_backend(tiny_setting, other, progress=False)
    assert weights_digest(theirs.model.state_dict()) == weights_digest(mine.model.state_dict())
    assert not (other / "corpus").exists()  # the corpus is never built: the tokens came with the pin


def test_a_differing_cached_build_is_moved_aside_not_mixed(pin, tiny_setting, cache_dir, tmp_path):
    other = tmp_path / "cache"
    install_pin(pin, tiny_setting, other, say=lambda _: None)
    base = other / "base" / tiny_setting.base_hash()
    (base / "model.safetensors").write_bytes(b"weights pre-trained on other numerics")
    said = []
    assert install_pin(pin, tiny_setting, other, say=said.append) is True
    assert _tree(base) == _tree(cache_dir / "base" / tiny_setting.base_hash())
    aside = [p for p in (other / "base").iterdir() if ".unpinned-" in p.name]
    assert len(aside) == 1 and (aside[0] / "model.safetensors").read_bytes().startswith(b"weights pre-trained")
    assert any("differs from the pin" in s for s in said)


def test_a_corrupt_file_is_refused_by_name(pin, tiny_setting, tmp_path):
    import shutil

    bad = tmp_path / "pin"
    shutil.copytree(pin, bad)
    with lzma.open(bad / "data" / "tokenizer.json.xz", "wb") as f:
        f.write(b"{}")
    with pytest.raises(PinError, match=r"tokenizer\.json\.xz: content does not match its sha256"):
        install_pin(bad, tiny_setting, tmp_path / "cache", say=lambda _: None)
    assert not (tmp_path / "cache" / "data" / tiny_setting.data_hash()).exists()  # nothing half-installed


def test_a_pin_of_another_setting_or_no_pin_is_refused(pin, corpus_root, tmp_path):
    changed = load_setting(tiny_setting_dict(corpus_root, pretrain={"steps": 61, "lr": 0.01, "warmup_steps": 5,
                                                                    "batch_size": 8}))
    with pytest.raises(PinError, match=r"pinned base_hash .* is not setting 'synthetic-tiny''s"):
        install_pin(pin, changed, tmp_path / "cache", say=lambda _: None)
    with pytest.raises(PinError, match=r"no pin\.json"):
        install_pin(tmp_path, changed, tmp_path / "cache", say=lambda _: None)


def test_a_pin_is_written_once(pin, tiny_setting, cache_dir):
    with pytest.raises(PinError, match="exists; a pin is written once"):
        pin_setting(tiny_setting, pin, cache_dir, say=lambda _: None)
