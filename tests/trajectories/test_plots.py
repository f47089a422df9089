"""Plots say what they show: legends beside the axes (never over the data), every score or loss
axis says which way is better, one labelled row per domain, and one figure compares runs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from mixagent.trajectories import DomainSpace, Feedback, History, Objective, Weights
from mixagent.trajectories.plots import (
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    comparison_figure,
    history_figure,
    plot_comparison,
    plot_history,
)

# the demo's shape: 10 source domains, 2 target domains
SPACE = DomainSpace.from_fields({"source": [f"src{i}" for i in range(10)], "target": ["coq", "maxima"]})


def episode(target: float, seed: int = 0, stages: int = 6) -> History:
    rng = np.random.default_rng(seed)
    h = History(space=SPACE)
    for t in range(stages + 1):
        if t:
            w = np.r_[np.full(10, (1 - target) / 10), np.full(2, target / 2)] + rng.uniform(0, 0.01, 12)
            h.record_weights(Weights.from_raw(w))
        h.record_feedback(Feedback(
            step=30 * t, tokens_seen=30 * t * 2048,
            field_scores={"source": -3.0 - 0.01 * t * target, "target": -5.0 + 0.1 * t * target},
            domain_losses={d.name: 3.0 + (-0.1 if d.field == "target" else 0.01) * t * target + rng.normal(0, 0.01)
                           for d in SPACE.domains}))
    return h


def _legends_clear_of_their_axes(fig) -> int:  # type: ignore[no-untyped-def]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    n = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        n += 1
        a, b = ax.get_window_extent(renderer), legend.get_window_extent(renderer)
        inside_x = b.x0 < a.x1 - 1 and b.x1 > a.x0 + 1
        inside_y = b.y0 < a.y1 - 1 and b.y1 > a.y0 + 1
        assert not (inside_x and inside_y), f"the legend covers the data of {ax.get_title()!r}"
    return n


def _labels(fig) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{ax.get_title()} | {ax.get_xlabel()} | {ax.get_ylabel()}" for ax in fig.axes]


def test_the_comparison_is_one_figure_whose_legends_cover_nothing():
    import matplotlib.pyplot as plt

    fig = comparison_figure({"served": episode(0.4), "uniform": episode(2 / 12, seed=1)}, Objective())
    try:
        assert _legends_clear_of_their_axes(fig) == 4
        labels = _labels(fig)
        # the target share panel shows both runs' shares and the prior, as lines (not hidden by a legend)
        share = next(ax for ax in fig.axes if "target-field share" in ax.get_title())
        assert len(share.get_lines()) == 3
        # which way is better, on every score and loss axis
        assert all(HIGHER_IS_BETTER in label for label in labels if "score" in label.split(" | ")[0])
        loss = next(ax for ax in fig.axes if "loss change" in ax.get_title())
        assert LOWER_IS_BETTER in loss.get_xlabel()
        # one labelled row per domain, grouped by field, with both runs as bars
        ticks = [t.get_text() for t in loss.get_yticklabels()]
        assert ticks == [f"src{i} (source)" for i in range(10)] + ["coq (target)", "maxima (target)"]
        assert len(loss.patches) == 2 * 12
    finally:
        plt.close(fig)


def test_one_run_has_its_legend_beside_the_weights_and_a_labelled_loss_map():
    import matplotlib.pyplot as plt

    fig = history_figure(episode(0.5), "one run")
    try:
        assert _legends_clear_of_their_axes(fig) == 2
        weights, scores, losses = fig.axes[:3]
        assert HIGHER_IS_BETTER in scores.get_ylabel()
        assert [t.get_text() for t in losses.get_yticklabels()][-2:] == ["coq (target)", "maxima (target)"]
        colorbar = fig.axes[3]
        assert LOWER_IS_BETTER in colorbar.get_ylabel()
        # the target-field share is drawn over the stacked weights, in the legend too
        assert "target-field share" in [t.get_text() for t in weights.get_legend().get_texts()]
    finally:
        plt.close(fig)


def test_the_files_are_written(tmp_path):
    a = plot_comparison({"served": episode(0.4), "uniform": episode(0.2)}, tmp_path / "c" / "demo.png")
    b = plot_history(episode(0.4), tmp_path / "one.png")
    assert a.stat().st_size > 10_000 and b.stat().st_size > 10_000
    with pytest.raises(ValueError, match="nothing to compare"):
        plot_comparison({}, tmp_path / "none.png")
