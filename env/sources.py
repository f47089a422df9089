"""Where real text comes from: Debian packages, the Python standard library, licence texts, the
chatterbot dialogue corpus, or a local folder. Each source yields raw texts with their origin;
:mod:`mixagent.env.corpus` cuts them into documents.

Nothing here downloads from a model or data hub: Debian packages come through ``apt-get download``
(the machine's package registry) and are unpacked with ``dpkg -x`` (no root install).
"""

from __future__ import annotations

import fnmatch
import gzip
import html
import importlib.util
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, ClassVar

import yaml

from mixagent.env.cache import build_lock
from mixagent.env.setting import (
    ChatterbotSource,
    DebSource,
    DomainSource,
    FilesSource,
    LicencesSource,
    PythonStdlibSource,
)

__all__ = ["SourceError", "SourceInfo", "open_source", "read_text_file", "split_documents"]


class SourceError(RuntimeError):
    """A source cannot be fetched or read; the message names the package or path."""


@dataclass(frozen=True)
class SourceInfo:
    """Provenance recorded in the corpus manifest."""

    kind: str
    origin: str
    """Debian package, PyPI distribution or folder."""
    version: str
    files: list[Path]
    reader: str


# ----- fetching ------------------------------------------------------------------------------------


def fetch_deb(package: str, cache_dir: Path) -> tuple[Path, str]:
    """Download and unpack one Debian package; returns ``(unpacked root, version)``. Cached."""
    debs = cache_dir / "debs"
    with build_lock(debs / package):  # parallel workers on a cold cache fetch and unpack once
        return _fetch_deb(package, debs)


def _fetch_deb(package: str, debs: Path) -> tuple[Path, str]:
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        if shutil.which("apt-get") is None:
            raise SourceError(f"package {package}: apt-get is not available to fetch it")
        proc = subprocess.run(
            ["apt-get", "download", package], cwd=debs, capture_output=True, text=True
        )
        found = sorted(debs.glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not found:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise SourceError(
                f"package {package}: apt-get download failed"
                + (f": {detail[-1]}" if detail else "")
                + " (run `apt-get update` first if the package lists are missing)"
            )
    deb = found[-1]
    version = deb.name.split("_")[1].replace("%3a", ":")
    root = debs / deb.stem
    done = root / ".unpacked"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        proc = subprocess.run(["dpkg", "-x", str(deb), str(root)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SourceError(f"package {package}: dpkg -x failed: {proc.stderr.strip()}")
        done.touch()
    return root, version


def _glob(root: Path, patterns: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[Path]:
    out: set[Path] = set()
    for pat in patterns:
        out.update(p for p in root.glob(pat) if p.is_file() and not p.is_symlink())
    rel = {p: p.relative_to(root).as_posix() for p in out}
    return sorted(p for p in out if not any(fnmatch.fnmatch(rel[p], e) for e in exclude))


def open_source(source: DomainSource, cache_dir: Path) -> SourceInfo:
    """Resolve a domain source to its files (fetching a package if needed)."""
    if isinstance(source, DebSource):
        root, version = fetch_deb(source.package, cache_dir)
        files = _glob(root, source.include)
        if not files:
            raise SourceError(f"package {source.package}: no file matches {list(source.include)}")
        return SourceInfo("deb", source.package, version, files, source.reader)
    if isinstance(source, PythonStdlibSource):
        root = Path(sysconfig.get_paths()["stdlib"])
        # Never what pip installed into the interpreter: the domain must not depend on it.
        files = _glob(root, source.include, (*source.exclude, "site-packages/*", "dist-packages/*"))
        return SourceInfo("python_stdlib", "python", sys.version.split()[0], files, "text")
    if isinstance(source, LicencesSource):
        root = Path(source.root)
        files = sorted(p for p in root.glob("*/copyright") if p.is_file())
        if not files:
            raise SourceError(f"licences: no */copyright file under {root}")
        return SourceInfo("licences", str(root), "system", files, "text")
    if isinstance(source, ChatterbotSource):
        spec = importlib.util.find_spec("chatterbot_corpus")
        if spec is None or not spec.submodule_search_locations:
            raise SourceError("chatterbot-corpus: the PyPI package is not installed (pip install chatterbot-corpus)")
        root = Path(next(iter(spec.submodule_search_locations))) / "data" / source.language
        files = sorted(root.glob("*.yml"))
        if not files:
            raise SourceError(f"chatterbot-corpus: no YAML files under {root}")
        return SourceInfo("chatterbot", "chatterbot-corpus", dist_version("chatterbot-corpus"), files, "chatterbot")
    if isinstance(source, FilesSource):
        root = Path(source.root)
        if not root.is_dir():
            raise SourceError(f"files: folder {root} does not exist")
        files = _glob(root, source.include)
        if not files:
            raise SourceError(f"files: no file under {root} matches {list(source.include)}")
        return SourceInfo("files", str(root), "local", files, source.reader)
    raise SourceError(f"unknown source kind {source!r}")  # pragma: no cover - pydantic prevents it


# ----- reading -------------------------------------------------------------------------------------


class _TextExtractor(HTMLParser):
    """HTML to text: drops scripts, styles and navigation, keeps paragraph breaks."""

    _SKIP: ClassVar[frozenset[str]] = frozenset({"script", "style", "head", "nav"})
    _BLOCK: ClassVar[frozenset[str]] = frozenset(
        {"p", "div", "br", "li", "pre", "h1", "h2", "h3", "h4", "h5", "tr", "dt", "dd", "table"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skip:
            self._skip -= 1
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _html_to_text(raw: str) -> str:
    parser = _TextExtractor()
    parser.feed(raw)
    text = html.unescape("".join(parser.parts))
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n\s*(\n\s*)+", "\n\n", text)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix in {".gz", ".dz"} or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


def _wordnet_glosses(raw: str) -> str:
    """``data.noun``-style lines -> "lemma, lemma: gloss" sentences, one per line."""
    out = []
    for line in raw.splitlines():
        if line.startswith("  ") or "|" not in line:
            continue  # licence header
        head, gloss = line.split("|", 1)
        parts = head.split()
        n_words = int(parts[3], 16) if len(parts) > 3 else 0
        words = [parts[4 + 2 * i].replace("_", " ") for i in range(n_words) if 4 + 2 * i < len(parts)]
        out.append(f"{', '.join(words)}: {gloss.strip()}")
    return "\n".join(out)


def _r_lazyload(path: Path) -> Iterator[tuple[str, str]]:
    """Character vectors from R's lazy-load database (``Rdata.rdb``/``.rdx``), one text per object."""
    import rdata  # noqa: PLC0415 - only this reader needs it

    def parse(raw: bytes) -> Any:
        # The entries are bare serialised R objects; rdata warns that it "assumed RDS", which is right.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    base = path.with_suffix("")
    index = parse(gzip.decompress(base.with_suffix(".rdx").read_bytes()))
    blob = base.with_suffix(".rdb").read_bytes()
    for name, (off, length) in index["variables"].items():
        # Each entry: a 4-byte big-endian length, then the zlib-compressed object.
        chunk = blob[int(off) : int(off) + int(length)]
        obj = parse(zlib.decompress(chunk[4:]))
        try:
            lines = [str(x) for x in obj]
        except TypeError:
            continue
        yield str(name), "\n".join(lines)


def _chatterbot(raw: str) -> str:
    doc = yaml.safe_load(raw) or {}
    convs = doc.get("conversations") or []
    return "\n\n".join("\n".join(str(turn) for turn in conv) for conv in convs if conv)


def read_text_file(path: Path, reader: str) -> Iterator[tuple[str, str]]:
    """Yield ``(origin, text)`` for one file, decoded by its reader."""
    if reader == "rlazyload":
        for name, text in _r_lazyload(path):
            yield f"{path.name}:{name}", text
        return
    raw = _decode(_read_bytes(path))
    if reader == "html":
        raw = _html_to_text(raw)
    elif reader == "wordnet":
        raw = _wordnet_glosses(raw)
    elif reader == "chatterbot":
        raw = _chatterbot(raw)
    yield path.name, raw


def split_documents(text: str, doc_chars: int, min_chars: int) -> list[str]:
    """Cut a text at blank lines into documents of about ``doc_chars`` characters.

    Paragraphs longer than ``2·doc_chars`` are cut at line breaks. Documents shorter than
    ``min_chars`` (a stray header, a license stub) are dropped.
    """
    text = text.replace("\r\n", "\n").replace("\x00", "")
    paras = re.split(r"\n[ \t]*\n", text)
    docs: list[str] = []
    cur: list[str] = []
    size = 0
    for p in paras:
        p = p.strip("\n")
        if not p.strip():
            continue
        pieces = [p]
        if len(p) > 2 * doc_chars:
            pieces, buf = [], ""
            for line in p.split("\n"):
                if len(buf) + len(line) > doc_chars and buf:
                    pieces.append(buf)
                    buf = ""
                buf += line + "\n"
            if buf:
                pieces.append(buf)
        for piece in pieces:
            if cur and size + len(piece) > doc_chars:
                docs.append("\n\n".join(cur))
                cur, size = [], 0
            cur.append(piece)
            size += len(piece) + 2
    if cur:
        docs.append("\n\n".join(cur))
    return [d for d in docs if len(d.strip()) >= min_chars]
