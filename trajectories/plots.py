"""Plots of raw histories: weight schedules, field scores and domain losses over training steps.

matplotlib is imported lazily (Agg backend) so the contract stays importable without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mixagent.trajectories.contract import SOURCE_FIELD, History, Trajectory
from mixagent.trajectories.encoding import balanced_scores, relative_gains

__all__ = ["plot_history", "plot_dataset"]


def _pyplot() -> Any:
    # lazy: matplotlib is the train extra (the ground floor imports without it), and the Agg backend
    # must be chosen before pyplot loads
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_history(history: History, path: str | Path, title: str = "") -> Path:
    """Three panels: stacked domain weights per stage, field scores, and held-out domain losses."""
    plt = _pyplot()
    space = history.space
    steps = np.array([fb.step for fb in history.feedback])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    w = history.weight_matrix()
    if len(w):
        edges = steps[: len(w) + 1]
        bottom = np.zeros(len(w))
        cmap = plt.get_cmap("tab20")
        for k, d in enumerate(space.domains):
            ax.bar(edges[:-1], w[:, k], width=np.diff(edges), bottom=bottom, align="edge",
                   color=cmap(k % 20), label=f"{d.name} ({d.field})", edgecolor="none")
            bottom += w[:, k]
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, ncol=2, loc="upper right")
    ax.set(title="domain weights per stage", xlabel="optimizer step", ylabel="share")
    ax = axes[1]
    scores = history.field_scores()
    for j, f in enumerate(space.fields):
        ax.plot(steps, scores[:, j], marker="o", ms=3, label=f)
    ax.set(title="field score (mean log-lik of continuations)", xlabel="optimizer step", ylabel="nats/token")
    ax.legend()
    ax = axes[2]
    losses = history.domain_losses()
    for k, d in enumerate(space.domains):
        ax.plot(steps, losses[:, k], ls="-" if d.field != "source" else "--", label=d.name, lw=1)
    ax.set(title="held-out loss per domain (dashed: source)", xlabel="optimizer step", ylabel="nats/token")
    ax.legend(fontsize=6, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _target_share(history: History) -> np.ndarray:
    space = history.space
    rows = [i for i, f in enumerate(space.fields) if f != SOURCE_FIELD]
    return (space.field_matrix() @ history.weight_matrix().T)[rows].sum(axis=0)


def plot_dataset(trajectories: list[Trajectory], out_dir: str | Path) -> list[Path]:
    """Three figures of a dataset, grouped by schedule family: ``weight_schedules.png`` (target
    share per stage of every trajectory), ``field_scores.png`` (each field's relative score gain per
    stage: family means, thin lines per trajectory) and ``final_scores.png`` (distribution of the
    final balanced score per family)."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        groups.setdefault(t.header.schedule, []).append(t)
    names = sorted(groups)
    cmap = plt.get_cmap("tab10")
    colour = {f: cmap(i % 10) for i, f in enumerate(names)}
    paths = []

    cols = min(len(names), 3) or 1
    rows = max((len(names) + cols - 1) // cols, 1)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3 * rows), squeeze=False, sharex=True, sharey=True)
    for ax, name in zip(axes.flat, names, strict=False):
        for t in groups[name]:
            share = _target_share(t.history)  # stage i spans [i, i+1): repeat the last value to close it
            ax.step(np.arange(len(share) + 1), np.append(share, share[-1:]), where="post", color=colour[name],
                    alpha=0.5, lw=1)
        ax.set(title=f"{name} (n={len(groups[name])})", ylim=(0, 1))
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    fig.supxlabel("stage")
    fig.supylabel("target-field share")
    fig.tight_layout()
    paths.append(out / "weight_schedules.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fields = trajectories[0].history.space.fields if trajectories else ()
    fig, axes = plt.subplots(1, max(len(fields), 1), figsize=(6 * max(len(fields), 1), 4.5), squeeze=False)
    for j, f in enumerate(fields):
        ax = axes[0, j]
        for name in names:
            curves = [relative_gains(t.history)[:, j] for t in groups[name]]
            for c in curves:
                ax.plot(c, color=colour[name], alpha=0.15, lw=0.7)
            n = min(len(c) for c in curves)
            ax.plot(np.mean([c[:n] for c in curves], axis=0), color=colour[name], lw=2, label=name)
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=f"{f}: relative score gain since the start", xlabel="feedback index", ylabel="g")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "field_scores.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4.5))
    finals = [[float(balanced_scores(t.history, t.header.objective)[-1]) for t in groups[n]] for n in names]
    if names:
        ax.boxplot(finals, showfliers=False)
        rng = np.random.default_rng(0)
        for i, (name, v) in enumerate(zip(names, finals, strict=True), 1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=10, color=colour[name], zorder=3)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set(title="final balanced score per schedule family", ylabel="B_T")
    fig.tight_layout()
    paths.append(out / "final_scores.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
