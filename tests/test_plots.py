"""Plots: DataFrame in, Figure out; save() writes PNG and SVG; build_report writes the figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fixtures.rundirs.synth import TINY_TEACHERS, make_tiny_sweep
from matplotlib.figure import Figure

from xbench.report import aggregate, build, common, load, plots


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root = make_tiny_sweep(tmp_path_factory.mktemp("tiny"), seeds=(0, 1))
    return root, aggregate.leaderboard(load.load_runs(root)), load.load_curves(root)


def _visible_axes(fig: Figure) -> int:
    return sum(ax.get_visible() for ax in fig.axes)


def test_each_plot_returns_a_figure(tiny: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    _, lb, curves = tiny
    n_teachers = len(TINY_TEACHERS)
    assert _visible_axes(plots.plot_benchmarks(lb)) == 3  # arith, numbers, avg
    assert _visible_axes(plots.plot_delta_vs_gold(lb)) == 1
    alpha = plots.plot_metric_vs_alpha(lb)
    assert _visible_axes(alpha) == n_teachers
    # One line per teacher (rank 4 is the only rank with several alphas); 5 alpha points on it.
    line = alpha.axes[0].get_lines()[0]
    assert len(line.get_xdata()) == 5
    assert _visible_axes(plots.plot_metric_vs_rank(lb)) == n_teachers
    assert _visible_axes(plots.plot_loss_curves(curves)) == 3  # loss, loss_ce, loss_kd/t0
    assert _visible_axes(plots.plot_numeral_mass(curves)) == n_teachers


def test_failed_cell_is_written_on_the_bar_chart(tmp_path: Path) -> None:
    tidy = pd.DataFrame(
        [
            ["r0", "e", "s", "t", "gold", None, None, "xbench", 0, "x", "acc", 40.0, 1.0, "done"],
            ["r1", "e", "s", "t", "pkl", None, None, "xbench", 0, None, None, None, None, "failed"],
        ],
        columns=common.TIDY_COLUMNS,
    )
    fig = plots.plot_benchmarks(aggregate.leaderboard(tidy))
    assert "failed" in {t.get_text() for t in fig.axes[0].texts}


def test_empty_inputs_raise(tiny: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    _, lb, curves = tiny
    with pytest.raises(ValueError, match="'alpha'"):
        plots.plot_metric_vs_alpha(lb.assign(alpha=float("nan")))
    with pytest.raises(ValueError, match="numeral_mass"):
        plots.plot_numeral_mass(curves[curves["key"] != plots.NUMERAL_MASS])


def test_save_and_build_report_figures(
    tiny: tuple[Path, pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    root, lb, _ = tiny
    png, svg = plots.save(plots.plot_metric_vs_rank(lb), tmp_path / "rank")
    assert png.read_bytes()[:4] == b"\x89PNG" and svg.read_text().lstrip().startswith("<?xml")
    written = build.build_report(root, tmp_path / "out")
    names = {p.name for k, p in written.items() if k.startswith("fig_")}
    for stem in ("benchmarks", "delta_vs_gold", "metric_vs_alpha", "metric_vs_rank",
                 "loss_curves", "numeral_mass"):  # fmt: skip
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    assert (tmp_path / "out" / "curves.csv").is_file()
