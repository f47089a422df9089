"""Plots of raw histories: one run (weights, field scores, domain losses), several runs of one
episode side by side (e.g. a served policy against a uniform mixture), and a whole dataset.

Every axis that shows a score or a loss says which way is better, legends sit beside the axes
(never over the data they explain), and per-domain losses are a heat map or bars with one labelled
row per domain rather than one line per domain. matplotlib is imported lazily (Agg backend) so the
contract stays importable without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.trajectories.contract import SOURCE_FIELD, DomainSpace, History, Objective, Trajectory
from mixagent.trajectories.encoding import balanced_scores, relative_gains

__all__ = ["plot_history", "plot_comparison", "history_figure", "comparison_figure", "plot_dataset", "target_share",
           "HIGHER_IS_BETTER", "LOWER_IS_BETTER"]

HIGHER_IS_BETTER = "↑ higher is better"
LOWER_IS_BETTER = "↓ lower is better"
SCORE_LABEL = f"nats/token ({HIGHER_IS_BETTER})"
"""Field score: the mean per-token log-likelihood of the field's held-out continuations."""
MAX_DOMAIN_LABELS = 48
"""Up to this many domains every heat-map row / bar is labelled; above it, ticks are thinned."""


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, imported lazily: matplotlib is the train extra (the ground
    floor imports without it), and the backend must be chosen before pyplot loads. Every figure of
    mixagent (reports, benchmarks, CLI plots) is drawn through it."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` (creating the folder) and close it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def _steps(history: History) -> np.ndarray:
    return np.array([fb.step for fb in history.feedback])


def mixture_target_share(space: DomainSpace, weight_matrix: np.ndarray) -> np.ndarray:
    """The share of every field but ``source`` in each row (one mixture over the domains) of ``weight_matrix``."""
    rows = [i for i, f in enumerate(space.fields) if f != SOURCE_FIELD]
    return (space.field_matrix() @ np.asarray(weight_matrix).T)[rows].sum(axis=0)


def target_share(history: History) -> np.ndarray:
    """The share of every field but ``source`` in each stage's mixture."""
    return mixture_target_share(history.space, history.weight_matrix()) if history.weights else np.zeros(0)


def _stage_steps(ax: Any, history: History, values: np.ndarray, **kw: Any) -> None:
    """A per-stage value as a step line over optimizer steps: stage i spans feedback i to i+1."""
    steps = _steps(history)[: len(values) + 1]
    if len(values) == 0:
        return
    if len(steps) == len(values):  # a stage still being trained: close it one interval on
        steps = np.append(steps, steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1))
    ax.step(steps, np.append(values, values[-1:]), where="post", **kw)


def _domain_labels(history: History) -> list[str]:
    return [f"{d.name} ({d.field})" for d in history.space.domains]


def _loss_change_map(fig: Any, ax: Any, history: History) -> None:
    """Each domain's held-out loss minus its loss at the start, per evaluation: rows are domains
    (grouped by field), blue = the loss fell (better)."""
    plt = pyplot()
    space = history.space
    order = [k for f in space.fields for k, d in enumerate(space.domains) if d.field == f]
    delta = (history.domain_losses() - history.domain_losses()[:1])[:, order].T
    lim = float(np.abs(delta).max()) or 1.0
    steps = _steps(history)
    im = ax.imshow(delta, aspect="auto", cmap=plt.get_cmap("RdBu_r"), vmin=-lim, vmax=lim,
                   interpolation="nearest")
    labels = [_domain_labels(history)[k] for k in order]
    every = max(1, -(-len(labels) // MAX_DOMAIN_LABELS))
    ax.set_yticks(range(0, len(labels), every), labels[::every], fontsize=6)
    xt = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int))
    ax.set_xticks(xt, [str(steps[i]) for i in xt])
    ax.set(title="held-out loss change since the start, per domain", xlabel="optimizer step")
    bar = fig.colorbar(im, ax=ax, shrink=0.9)
    bar.set_label(f"Δ loss, nats/token ({LOWER_IS_BETTER}: blue)", fontsize=7)


def history_figure(history: History, title: str = "") -> Any:
    """The figure of :func:`plot_history` (returned open, for tests and callers that add to it)."""
    plt = pyplot()
    space = history.space
    steps = _steps(history)
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8), layout="constrained",
                             gridspec_kw={"width_ratios": [1.25, 1, 1.1]})
    ax = axes[0]
    w = history.weight_matrix()
    if len(w):
        edges = steps[: len(w) + 1]
        if len(edges) == len(w):
            edges = np.append(edges, edges[-1] + (edges[-1] - edges[-2] if len(edges) > 1 else 1))
        bottom = np.zeros(len(w))
        cmap = plt.get_cmap("tab20")
        labels = _domain_labels(history)
        # target domains at the bottom, so the target-field share line runs along the top of their stack
        order = [k for k, d in enumerate(space.domains) if d.field != SOURCE_FIELD]
        order += [k for k, d in enumerate(space.domains) if d.field == SOURCE_FIELD]
        for k in order:
            label = labels[k]
            ax.bar(edges[:-1], w[:, k], width=np.diff(edges), bottom=bottom, align="edge",
                   color=cmap(k % 20), label=label, edgecolor="none")
            bottom += w[:, k]
        _stage_steps(ax, history, target_share(history), color="k", lw=2, label="target-field share")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                  ncol=1 if space.size <= 20 else 2)
    ax.set(title="domain weights per stage", xlabel="optimizer step", ylabel="share of the batch")
    ax = axes[1]
    scores = history.field_scores()
    for j, f in enumerate(space.fields):
        ax.plot(steps, scores[:, j], marker="o", ms=3, label=f)
    ax.set(title="field score (mean log-likelihood of held-out continuations)", xlabel="optimizer step",
           ylabel=SCORE_LABEL)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=max(len(space.fields), 1),
              frameon=False)
    _loss_change_map(fig, axes[2], history)
    if title:
        fig.suptitle(title)
    return fig


def plot_history(history: History, path: str | Path, title: str = "") -> Path:
    """One run in three panels: the domain weights of each stage (stacked, with the target-field
    share drawn over them and the legend beside the axes), the field scores (higher is better) and
    each domain's held-out loss change since the start as a heat map (lower is better)."""
    return save_figure(history_figure(history, title), path)


def comparison_figure(runs: Mapping[str, History], objective: Objective | None = None, title: str = "") -> Any:
    """The figure of :func:`plot_comparison` (returned open)."""
    plt = pyplot()
    if not runs:
        raise ValueError("runs: nothing to compare")
    labels = list(runs)
    first = runs[labels[0]]
    space = first.space
    objective = objective or Objective()
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(labels)}
    fig, axes = plt.subplots(2, 2, figsize=(15, 9.5), layout="constrained")

    ax = axes[0, 0]
    for name, h in runs.items():
        _stage_steps(ax, h, target_share(h), color=colours[name], lw=2, label=name)
    prior = float(space.field_priors()[[i for i, f in enumerate(space.fields) if f != SOURCE_FIELD]].sum())
    ax.axhline(prior, color="0.5", ls=":", lw=1, label=f"prior share {prior:.2f}")
    ax.set(title="target-field share of each stage's mixture", xlabel="optimizer step",
           ylabel="share of the batch", ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    ax = axes[0, 1]
    styles = ["-", "--", ":", "-."]
    for name, h in runs.items():
        scores = h.field_scores()
        for j, f in enumerate(space.fields):  # change since the start: fields of any scale share the axis
            ax.plot(_steps(h), scores[:, j] - scores[0, j], ls=styles[j % len(styles)], color=colours[name],
                    marker="o", ms=2.5, label=f"{f}, {name}")
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set(title="field score change since the start (mean log-lik. of held-out continuations)",
           xlabel="optimizer step", ylabel=f"Δ score, {SCORE_LABEL}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    ax = axes[1, 0]
    for name, h in runs.items():
        ax.plot(_steps(h), balanced_scores(h, objective), color=colours[name], marker="o", ms=3, label=name)
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set(title=f"balanced score B (relative gains since the start, λ = {objective.spread_penalty:g})",
           xlabel="optimizer step", ylabel=f"B ({HIGHER_IS_BETTER})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    ax = axes[1, 1]
    order = [k for f in space.fields for k, d in enumerate(space.domains) if d.field == f]
    names = [_domain_labels(first)[k] for k in order]
    y = np.arange(len(order))
    height = 0.8 / len(runs)
    for i, (name, h) in enumerate(runs.items()):
        losses = h.domain_losses()
        change = (losses[-1] - losses[0])[order]
        ax.barh(y + (i - (len(runs) - 1) / 2) * height, change, height=height, color=colours[name], label=name)
    ax.axvline(0, color="k", lw=0.6)
    every = max(1, -(-len(names) // MAX_DOMAIN_LABELS))
    ax.set_yticks(y[::every], names[::every], fontsize=7)
    ax.invert_yaxis()
    ax.set(title="held-out loss change per domain, start to end", ylabel="",
           xlabel=f"Δ loss, nats/token ({LOWER_IS_BETTER})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if title:
        fig.suptitle(title)
    return fig


def plot_comparison(runs: Mapping[str, History], path: str | Path, objective: Objective | None = None,
                    title: str = "") -> Path:
    """Runs of the same episode (e.g. ``{"served by agent": h1, "uniform": h2}``) in one figure:
    the target-field share of each stage, the field scores, the balanced score under ``objective``
    (all higher is better), and each domain's held-out loss change from start to end (lower is
    better), every panel with one colour per run and its legend beside the axes."""
    return save_figure(comparison_figure(runs, objective, title), path)


def domain_colours(fields: Sequence[str]) -> list[Any]:
    """One colour per domain (``fields``: each domain's field): source domains in blues, the
    others in oranges, light to dark in the space's order."""
    from matplotlib import colormaps  # noqa: PLC0415

    source = [i for i, f in enumerate(fields) if f == SOURCE_FIELD]
    other = [i for i, f in enumerate(fields) if f != SOURCE_FIELD]
    colours: list[Any] = [None] * len(fields)
    for idx, cmap in ((source, "Blues"), (other, "Oranges")):
        for j, i in enumerate(idx):
            colours[i] = colormaps[cmap](0.3 + 0.6 * j / max(len(idx) - 1, 1))
    return colours


def stack_domain_weights(ax: Any, weights: np.ndarray, colours: Sequence[Any]) -> None:
    """The K-dimensional schedule ``weights [T, K]`` as a stacked area over decisions."""
    ax.stackplot(np.arange(weights.shape[0]), weights.T, colors=colours, linewidth=0)
    ax.set(xlim=(0, max(weights.shape[0] - 1, 1)), ylim=(0, 1), xlabel="decision")


def domain_figure(panels: int, domains: int) -> tuple[Any, Any, float]:
    """A grid of up to 3 stacked-area panels per row, with room below for a legend of ``domains``
    entries; returns the figure, the axes and the bottom of the panels' area (for tight_layout)."""
    plt = pyplot()
    cols = min(3, max(panels, 1))
    rows = (panels + cols - 1) // cols
    legend_rows = -(-domains // (4 * cols))
    height = 3.0 * rows + 0.3 + 0.22 * legend_rows
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, height), squeeze=False, sharey=True)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    return fig, axes, (0.22 * legend_rows + 0.1) / height


def domain_legend(fig: Any, names: Sequence[str], colours: Sequence[Any], columns: int) -> None:
    plt = pyplot()
    fig.legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in colours], list(names), loc="lower center",
               ncol=min(len(names), 4 * columns), fontsize=7, frameon=False)


def plot_dataset(trajectories: list[Trajectory], out_dir: str | Path) -> list[Path]:
    """The figures of a dataset, grouped by schedule family: ``weight_schedules.png`` (target
    share per stage of every trajectory), ``field_scores.png`` (each field's relative score gain per
    stage: family means, thin lines per trajectory), ``final_scores.png`` (distribution of the
    final balanced score per family) and, for domain-level data, ``domain_weights.png`` (each
    family's mean domain weights as a stacked area)."""
    plt = pyplot()
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
            share = target_share(t.history)  # stage i spans [i, i+1): repeat the last value to close it
            ax.step(np.arange(len(share) + 1), np.append(share, share[-1:]), where="post", color=colour[name],
                    alpha=0.5, lw=1)
        ax.set(title=f"{name} (n={len(groups[name])})", ylim=(0, 1))
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    fig.supxlabel("stage")
    fig.supylabel("target-field share")
    fig.tight_layout()
    paths.append(save_figure(fig, out / "weight_schedules.png", dpi=100))

    fields = trajectories[0].history.space.fields if trajectories else ()
    fig, axes = plt.subplots(1, max(len(fields), 1), figsize=(7.5 * max(len(fields), 1), 4.5), squeeze=False,
                             layout="constrained")
    for j, f in enumerate(fields):
        ax = axes[0, j]
        for name in names:
            curves = [relative_gains(t.history)[:, j] for t in groups[name]]
            for c in curves:
                ax.plot(c, color=colour[name], alpha=0.15, lw=0.7)
            n = min(len(c) for c in curves)
            ax.plot(np.mean([c[:n] for c in curves], axis=0), color=colour[name], lw=2, label=name)
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=f"{f}: relative score gain since the start", xlabel="feedback index",
               ylabel=f"g ({HIGHER_IS_BETTER})")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    paths.append(save_figure(fig, out / "field_scores.png", dpi=100))

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4.5))
    finals = [[float(balanced_scores(t.history, t.header.objective)[-1]) for t in groups[n]] for n in names]
    if names:
        ax.boxplot(finals, showfliers=False)
        rng = np.random.default_rng(0)
        for i, (name, v) in enumerate(zip(names, finals, strict=True), 1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=10, color=colour[name], zorder=3)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set(title="final balanced score per schedule family", ylabel=f"B_T ({HIGHER_IS_BETTER})")
    fig.tight_layout()
    paths.append(save_figure(fig, out / "final_scores.png", dpi=100))

    if any(t.header.action.level == "domain" for t in trajectories):  # the K-dimensional schedules
        space = trajectories[0].history.space
        colours = domain_colours([d.field for d in space.domains])
        fig, axes, bottom = domain_figure(len(names), space.size)
        for ax, name in zip(axes.flat, names, strict=False):
            mats = [t.history.weight_matrix() for t in groups[name] if t.history.weights]
            n = min(len(m) for m in mats)
            stack_domain_weights(ax, np.mean([m[:n] for m in mats], axis=0), colours)
            ax.set_title(f"{name}: mean domain weights (n={len(mats)})", fontsize=8)
        domain_legend(fig, space.names, colours, axes.shape[1])
        fig.tight_layout(rect=(0, bottom, 1, 1))
        paths.append(save_figure(fig, out / "domain_weights.png", dpi=100))
    return paths
