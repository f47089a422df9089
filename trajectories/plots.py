"""Plots of raw histories: weight schedules, field scores and domain losses over training steps.

matplotlib is imported lazily (Agg backend) so the contract stays importable without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixagent.trajectories.contract import History

__all__ = ["plot_history"]


def plot_history(history: History, path: str | Path, title: str = "") -> Path:
    """Three panels: stacked domain weights per stage, field scores, and held-out domain losses."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

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
