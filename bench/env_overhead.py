"""What does the environment cost on top of the training it wraps?

Times ``DataMixingEnv.step`` against a bare torch loop that does the same optimizer steps (same
model, same initial weights, same batches, same AdamW settings and learning-rate schedule) and the
same evaluation forward passes, interleaved interval by interval in one process so that machine
noise hits both alike. Overhead = everything except the optimizer steps and the evaluation forward
passes: batch sampling, weight mapping, history bookkeeping, validation, observation encoding.

    python bench/env_overhead.py                       # default setting, 8 intervals
    python bench/env_overhead.py --setting math-small --intervals 4 --threads 2

Two measures: the difference of the two totals (median over intervals; the order alternates, but on
a shared machine each total moves by tens of percent), and the overhead *accounted* piece by piece
(the env's own work timed alone, median of 25 repeats, over the median env step). Both sides must
compute identical losses, which the table checks.

Prints a table and writes its JSON to ``--out`` (default a temporary folder; ``--out
bench/results/env_overhead.json`` replaces the committed figures). Target: overhead <= 5% of step time.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixagent.env.backend import get_lr, make_optimizer
from mixagent.env.mixing_env import DataMixingEnv
from mixagent.env.setting import load_setting
from mixagent.trajectories.contract import History
from mixagent.trajectories.encoding import action_to_weights, balanced_scores


def bare_interval(model, opt, batches, first_step, cpt, total_steps):  # type: ignore[no-untyped-def]
    """The reference: nothing but the optimizer steps."""
    model.train()
    for i, batch in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = get_lr(
                first_step + i, lr=cpt.lr, warmup=cpt.warmup_steps, total=total_steps, min_ratio=cpt.min_lr_ratio
            )
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cpt.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)


@torch.inference_mode()
def bare_eval(model, windows, batch_size):  # type: ignore[no-untyped-def]
    """The reference: nothing but the evaluation forward passes."""
    model.eval()
    out = []
    for chunk in windows.split(batch_size):
        logits = model(input_ids=chunk[:, :-1], use_cache=False).logits
        out.append(F.cross_entropy(logits.reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1), reduction="none"))
    return torch.cat(out)


def _median_time(fn, reps: int = 25) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_overhead_components(env: DataMixingEnv, action: np.ndarray, nll: torch.Tensor) -> dict[str, float]:
    """Seconds per env step spent outside the optimizer steps and evaluation forward passes, timed
    piece by piece (robust to machine noise, unlike the difference of two noisy totals). Uses the
    full episode's history, where encoding and scoring cost the most."""
    setting, backend, space = env.setting, env.backend, env.space
    cpt = setting.cpt
    full = env.history
    probs = action_to_weights(action, space, setting.action).as_array()
    rng = np.random.default_rng(1)

    saved = env._history

    def bookkeeping() -> None:
        # What step_weights does around training and evaluation, on the real env object.
        h = History(space=space, feedback=full.feedback[:-1], weights=full.weights[:-1])
        w = action_to_weights(action, space, setting.action)
        h.record_weights(w)
        h.record_feedback(full.feedback[-1])
        b = balanced_scores(h, setting.objective)
        env._history = h
        env._get_info(train_loss=0.0, balanced=float(b[-1]))
        env._get_obs()

    def per_step_extras() -> None:
        # What CPTBackend.train_step does besides the model's math: mode switch, lr, loss sum.
        total = torch.zeros(())
        for i in range(cpt.interval):
            backend.model.train()
            for group in backend.optimizer.param_groups:
                group["lr"] = backend.lr_at(i)
            total += torch.zeros(())
        float(total)

    out = {
        "sample_batches_s": _median_time(
            lambda: [backend.sampler.sample(probs, cpt.batch_size, rng) for _ in range(cpt.interval)]
        ),
        "per_step_extras_s": _median_time(per_step_extras),
        "feedback_from_nll_s": _median_time(lambda: backend.feedback_from_nll(nll)),
        "history_reward_obs_info_s": _median_time(bookkeeping),
    }
    env._history = saved
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", default="math-tiny")
    ap.add_argument("--intervals", type=int, default=8, help="env steps (each = one interval + evaluation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: on a shared 2-core machine, 2 OpenMP threads stall whenever "
        "another process holds a core, which swamps the measurement)",
    )
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mixagent-bench" / "env_overhead.json")
    args = ap.parse_args()

    setting = load_setting(args.setting)
    torch.set_num_threads(args.threads)
    cpt = setting.cpt
    env = DataMixingEnv(setting, progress=True)
    backend = env.backend
    intervals = min(args.intervals, cpt.horizon)
    action = np.zeros(env.action_space.shape, dtype=np.float32)

    env.reset(seed=args.seed)
    # The reference trains a copy of the same base model with an identically configured AdamW on
    # the batches the env will draw: same rng state, same weights.
    ref_model = copy.deepcopy(backend.model)
    ref_opt = make_optimizer(ref_model, cpt)
    probs = action_to_weights(action, env.space, setting.action).as_array()
    rng = copy.deepcopy(backend.rng)
    batches = [
        [backend.sampler.sample(probs, cpt.batch_size, rng) for _ in range(cpt.interval)] for _ in range(intervals)
    ]
    windows = backend.eval_set.windows

    def run_bare(t: int) -> tuple[float, float, torch.Tensor]:
        b0 = time.perf_counter()
        bare_interval(ref_model, ref_opt, batches[t], t * cpt.interval, cpt, setting.total_steps)
        b1 = time.perf_counter()
        out = bare_eval(ref_model, windows, setting.eval.batch_size)
        return b1 - b0, time.perf_counter() - b1, out

    def run_env() -> tuple[float, dict]:
        e0 = time.perf_counter()
        info = env.step(action)[4]
        return time.perf_counter() - e0, info

    rows = []
    for t in range(intervals):
        # Alternate which side goes first, so drifts in machine load hit both alike.
        if t % 2:
            bare_train_s, bare_eval_s, nll = run_bare(t)
            env_step_s, info = run_env()
        else:
            env_step_s, info = run_env()
            bare_train_s, bare_eval_s, nll = run_bare(t)
        secs = env.last_stage_seconds
        ref_loss = nll.view(windows.size(0), -1).numpy().astype(np.float64)
        rows_of = backend.eval_set.domain_of_row
        ref_domain = [ref_loss[rows_of == k].mean() for k in range(env.space.size)]
        env_domain = [info["feedback"]["domain_losses"][n] for n in env.space.names]
        rows.append(
            {
                "interval": t,
                "env_step_s": env_step_s,
                "env_train_s": secs["train"],
                "env_eval_s": secs["eval"],
                "bare_train_s": bare_train_s,
                "bare_eval_s": bare_eval_s,
                "max_abs_loss_diff": float(np.max(np.abs(np.array(ref_domain) - np.array(env_domain)))),
            }
        )
        r = rows[-1]
        print(
            f"interval {t:2d}: env step {r['env_step_s']:.3f}s  bare {r['bare_train_s'] + r['bare_eval_s']:.3f}s  "
            f"overhead {(r['env_step_s'] - r['bare_train_s'] - r['bare_eval_s']) / r['env_step_s']:+.2%}  "
            f"|Δloss| {r['max_abs_loss_diff']:.1e}",
            flush=True,
        )

    components = time_overhead_components(env, action, nll.view(windows.size(0), -1))
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "interval"}
    overheads = [(r["env_step_s"] - r["bare_train_s"] - r["bare_eval_s"]) / r["env_step_s"] for r in rows]
    train_tokens = cpt.interval * cpt.batch_size * cpt.seq_len
    eval_tokens = int(windows.size(0) * (windows.size(1) - 1))
    summary = {
        "setting": setting.name,
        "setting_hash": setting.hash(),
        "model": env.model_description,
        "intervals": intervals,
        "interval_steps": cpt.interval,
        "median_env_step_s": med["env_step_s"],
        "median_bare_step_s": statistics.median(r["bare_train_s"] + r["bare_eval_s"] for r in rows),
        "median_overhead_fraction": statistics.median(overheads),
        "overheads": overheads,
        "train_tokens_per_s": {"env": train_tokens / med["env_train_s"], "bare": train_tokens / med["bare_train_s"]},
        "eval_tokens_per_s": {"env": eval_tokens / med["env_eval_s"], "bare": eval_tokens / med["bare_eval_s"]},
        "max_abs_loss_diff": max(r["max_abs_loss_diff"] for r in rows),
        "overhead_components_s": components,
        "accounted_overhead_fraction": sum(components.values()) / med["env_step_s"],
        "target_overhead_fraction": 0.05,
        "rows": rows,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print()
    print(f"{'':28s}{'env':>12s}{'bare torch':>12s}")
    print(f"{'median step (s)':28s}{summary['median_env_step_s']:12.3f}{summary['median_bare_step_s']:12.3f}")
    train_tps, eval_tps = summary["train_tokens_per_s"], summary["eval_tokens_per_s"]
    print(f"{'train tokens/s':28s}{train_tps['env']:12.0f}{train_tps['bare']:12.0f}")
    print(f"{'eval tokens/s':28s}{eval_tps['env']:12.0f}{eval_tps['bare']:12.0f}")
    print(f"{'overhead (difference)':28s}{summary['median_overhead_fraction']:12.2%}"
          "   median of (env - bare)/env; noisy")
    for k, v in components.items():
        print(f"{'  ' + k:28s}{v * 1e3:10.2f}ms")
    print(f"{'overhead (accounted)':28s}{summary['accounted_overhead_fraction']:12.3%}   (target <= 5%)")
    print(f"{'max |env - bare| loss':28s}{summary['max_abs_loss_diff']:12.1e}   (same work: should be ~0)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
