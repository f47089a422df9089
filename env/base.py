"""The base checkpoint that every CPT episode starts from, and the backend built around it.

A model built from config is pre-trained on the *source field only* (domains by their priors), so
that training on the target field later measurably makes it forget. The result is cached by the
setting's base hash (data + model + pre-training), so settings that differ only in the CPT budget,
evaluation or objective share one base. A pretrained checkpoint is used as it is.

Layout of ``<cache>/base/<base_hash>/``: ``config.json``, ``model.safetensors`` (via
``save_pretrained``), ``pretrain.json`` (loss curve, feedback, wall time).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mixagent.env.backend import CPTBackend
from mixagent.env.cache import atomic_dir, build_lock, cache_root, write_json_atomic
from mixagent.env.data import DomainTokens, prepare_data
from mixagent.env.model import build_llama, count_parameters, load_pretrained, quiet_transformers
from mixagent.env.setting import LlamaSpec, Setting
from mixagent.trajectories.contract import SOURCE_FIELD

__all__ = ["load_base_model", "build_backend", "describe_model", "base_info"]

log = logging.getLogger(__name__)


def describe_model(setting: Setting, model: Any) -> str:
    n = count_parameters(model)
    if isinstance(setting.model, LlamaSpec):
        m = setting.model
        return f"llama-{m.n_layer}x{m.d_model} ({n / 1e6:.2f}M params, base {setting.base_hash()})"
    return f"{setting.model.path} ({n / 1e6:.1f}M params)"


def _pretrain(setting: Setting, data: DomainTokens, say: Any, progress: bool) -> tuple[Any, dict[str, Any]]:
    assert isinstance(setting.model, LlamaSpec)
    spec = setting.pretrain
    model = build_llama(setting.model, data.vocab_size, setting.cpt.seq_len, setting.seed, data.eos_id)
    space = setting.space
    backend = CPTBackend(model, data, space, setting.pretrain_cpt(), setting.eval, total_steps=spec.steps)
    backend.reset(setting.seed)
    # Source field only, domains in proportion to their priors.
    probs = space.priors() * (space.field_matrix()[space.fields.index(SOURCE_FIELD)] > 0)
    probs = probs / probs.sum()
    say(f"pre-training the base model ({count_parameters(model) / 1e6:.2f}M params) "
        f"on the source field for {spec.steps} steps")
    t0 = time.time()
    curve = []
    chunk = 50
    with tqdm(total=spec.steps, desc="pretrain", unit="step", disable=not progress) as bar:
        while backend.step < spec.steps:
            n = min(chunk, spec.steps - backend.step)
            loss = backend.train(probs, n)
            curve.append({"step": backend.step, "train_loss": loss})
            bar.update(n)
            bar.set_postfix(loss=f"{loss:.3f}")
    feedback = backend.evaluate()
    info = {
        "steps": spec.steps,
        "seconds": round(time.time() - t0, 1),
        "curve": curve,
        "feedback": feedback.model_dump(),
        "parameters": count_parameters(model),
    }
    return model, info


def load_base_model(
    setting: Setting, data: DomainTokens, root: Path | None = None, say: Any = None, progress: bool = True
) -> Any:
    """The base checkpoint of ``setting`` (pre-trained and cached on first use)."""
    say = say or log.info
    if not isinstance(setting.model, LlamaSpec):
        model = load_pretrained(setting.model)
        if setting.pretrain.steps:
            say("pretrain.steps is ignored for a pretrained checkpoint")
        return model
    # lazy: transformers (seconds to import) loads only when a Llama base is built or read
    from transformers import LlamaForCausalLM  # noqa: PLC0415

    quiet_transformers()
    final = cache_root(root) / "base" / setting.base_hash()
    with build_lock(final):
        if not (final / "pretrain.json").exists():
            model, info = _pretrain(setting, data, say, progress)
            with atomic_dir(final) as tmp:
                model.save_pretrained(tmp)
                write_json_atomic(tmp / "pretrain.json", info)
            say(f"base checkpoint saved at {final}")
            return model
    return LlamaForCausalLM.from_pretrained(final, local_files_only=True)


def build_backend(
    setting: Setting, root: Path | None = None, say: Any = None, progress: bool = True
) -> tuple[CPTBackend, str]:
    """Data, base model and CPT backend for ``setting``; also returns a model description."""
    data = prepare_data(setting, root, say)
    model = load_base_model(setting, data, root, say, progress)
    backend = CPTBackend(model, data, setting.space, setting.cpt, setting.eval, setting.total_steps)
    return backend, describe_model(setting, model)


def base_info(setting: Setting, root: Path | None = None) -> dict[str, Any] | None:
    """The cached pre-training record, if the base exists."""
    path = cache_root(root) / "base" / setting.base_hash() / "pretrain.json"
    return json.loads(path.read_text()) if path.exists() else None

