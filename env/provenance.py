"""Where a run's numbers come from, beyond its setting: the corpus content, the base weights and the
floating-point machinery that trained on them.

The setting hash names *what was asked for*; it cannot see a Debian package that was updated under
the same name, nor a CPU whose vector kernels sum in another order. Training is deterministic on one
machine, but two machines with different instruction sets (AVX2 vs AVX-512, MKL's code paths) give
base models whose held-out losses differ in the third or fourth decimal after 1,500 steps (measured:
up to 0.0026 nats per domain between this repository's machines on math-tiny; 0.0455 nats on
proofs-tiny's target domains between an AVX-512 and an AVX2 machine, 2026-12-07). A dataset built over several
sittings on several machines therefore records, per trajectory, which corpus, base and numerics
produced it, so that a run on another corpus is refused and a run on other numerics is told apart.
A GPU is such numerics too: a run whose model computes on CUDA (and in which dtype) says so at the
end of its numerics string; a CPU run's string is what it always was.
"""

from __future__ import annotations

import hashlib
import json
import platform
from functools import cache
from typing import Any

import numpy

__all__ = ["corpus_digest", "weights_digest", "numerics", "device_numerics", "fingerprint"]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def corpus_digest(manifest: dict[str, Any]) -> str:
    """Content digest of a tokenised corpus: per domain its package version and the sha256 of its
    train and held-out text, and the token counts the tokenizer made of them."""
    keys = ("domain", "source", "version", "train_sha256", "heldout_sha256", "train_tokens", "heldout_tokens")
    domains = [{k: d.get(k) for k in keys} for d in manifest.get("domains", [])]
    tokenizer = {"tokenizer": manifest.get("tokenizer"), "vocab_size": manifest.get("vocab_size")}
    return _digest({"domains": domains, **tokenizer})


def weights_digest(state: dict[str, Any]) -> str:
    """sha256 (16 hex digits) of a model's parameters and buffers, by name, bit for bit."""
    import torch  # noqa: PLC0415 - only the model digests need torch; corpus_digest does not

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@cache
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_numerics(device: Any, autocast: str = "none") -> str:
    """The accelerator part of a run's numerics: empty on the CPU; on CUDA the GPU, its compute
    capability, the CUDA and cuDNN versions and the dtype (``float32`` or ``bfloat16 autocast``)."""
    import torch  # noqa: PLC0415

    dev = torch.device(device)
    if dev.type == "cpu":
        return ""
    if dev.type != "cuda":
        raise ValueError(f"runtime.device: no numerics description for device type {dev.type!r}")
    props = torch.cuda.get_device_properties(dev.index if dev.index is not None else torch.cuda.current_device())
    dtype = "bfloat16 autocast" if autocast == "bf16" else "float32"
    cudnn = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    return f"cuda {props.name} (sm_{props.major}{props.minor}), CUDA {torch.version.cuda}, cuDNN {cudnn}, {dtype}"


def numerics(device: Any = "cpu", autocast: str = "none") -> str:
    """The CPU and the libraries whose kernels decide the float results of a run, then, for a model
    on a GPU, :func:`device_numerics` (a CPU run's string is unchanged by the device option)."""
    # lazy: only describing a model's numerics needs torch and transformers; corpus_digest does not
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    text = (
        f"{platform.machine()} {_cpu_model()} ({torch.backends.cpu.get_cpu_capability()}); "
        f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {numpy.__version__}"
    )
    accelerator = device_numerics(device, autocast)
    return f"{text}; {accelerator}" if accelerator else text


def fingerprint(manifest: dict[str, Any], base_state: dict[str, Any], device: Any = "cpu",
                autocast: str = "none") -> dict[str, str]:
    """What a trajectory record keeps of its environment: ``corpus`` and ``base`` digests, ``numerics``
    (with the device and dtype the model computed in, when that is a GPU)."""
    return {"corpus": corpus_digest(manifest), "base": weights_digest(base_state),
            "numerics": numerics(device, autocast)}
