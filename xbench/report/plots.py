"""Figures of the report: every function takes a DataFrame and returns a matplotlib Figure.

Inputs are the tables of ``xbench.report``: a leaderboard (``aggregate.leaderboard``) for the result
figures, a curves table (``load.load_curves``) for the training figures. Figures are built with
``matplotlib.figure.Figure`` directly, not pyplot, so no global figure state leaks between calls
and no GUI backend is needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from xbench.io import atomic_path
from xbench.report import aggregate, common

NUMERAL_MASS = "train/numeral_mass"


def _colors(n: int) -> list[Any]:
    """``n`` distinct colours: the default cycle up to 10 series, tab20 beyond (no repeats)."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _label(row: pd.Series, with_teachers: bool = False) -> str:
    """``method`` plus the swept axes that are set (alpha, projection rank K)."""
    parts = [str(row["teachers"])] if with_teachers else []
    parts.append(str(row["method"]))
    if "alpha" in row and not pd.isna(row["alpha"]):
        parts.append(f"α={row['alpha']:g}")
    if "rank" in row and not pd.isna(row["rank"]):
        parts.append(f"K={row['rank']:g}")
    return " ".join(parts)


def _grid(
    n: int, width: float = 4.0, height: float = 3.2, max_cols: int = 3
) -> tuple[Figure, list[Axes]]:
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_benchmarks(lb: pd.DataFrame, tasks: list[str] | None = None) -> Figure:
    """Per-benchmark bars: one panel per benchmark (and avg), bars grouped by teacher(s).

    Args:
        lb: A leaderboard. Error bars are the 95% CIs; a failed or missing cell is written
            where its bar would be, so it is not silently absent.
        tasks: Columns to show (default: every benchmark and ``avg``).
    """
    tasks = tasks or aggregate.leaderboard_tasks(lb)
    teachers = list(dict.fromkeys(lb["teachers"]))
    labels = list(dict.fromkeys(_label(r) for _, r in lb.iterrows()))
    color = dict(zip(labels, _colors(len(labels)), strict=True))
    width = 0.8 / max(1, max(len(lb[lb["teachers"] == t]) for t in teachers))
    fig, axes = _grid(len(tasks), width=max(4.0, 0.9 * len(teachers) + 2))
    for ax, task in zip(axes, tasks, strict=True):
        for gi, teacher in enumerate(teachers):
            grp = lb[lb["teachers"] == teacher].reset_index(drop=True)
            for j, row in grp.iterrows():
                x = gi + width * (j + 0.5 - len(grp) / 2)  # centred on the teacher's tick
                lab = _label(row)
                status = row[f"{task}_status"]
                if status in ("missing", "failed"):
                    ax.text(x, 0, status, rotation=90, ha="center", va="bottom", fontsize=7)
                    continue
                ci = row[f"{task}_ci95"]
                ax.bar(
                    x,
                    row[task],
                    width,
                    color=color[lab],
                    label=lab,
                    yerr=None if pd.isna(ci) else ci,
                    capsize=2,
                )
        ax.set_xticks(range(len(teachers)), teachers, rotation=20, ha="right", fontsize=7)
        ax.set_title(task)
        ax.set_ylabel("score (0-100)")
    _legend(fig, axes)
    return fig


def _legend(fig: Figure, axes: list[Axes]) -> None:
    """One figure-level legend with each label once (panels repeat the same series)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="outside right upper", fontsize=7)


def plot_delta_vs_gold(lb: pd.DataFrame) -> Figure:
    """Delta of every non-GOLD row against GOLD with the same teacher(s), per benchmark and avg."""
    deltas = aggregate.deltas_vs_gold(lb)
    if deltas.empty:
        raise ValueError("No leaderboard row has a GOLD row with the same teacher(s) to compare.")
    tasks = list(dict.fromkeys(deltas["task"]))
    series = deltas.drop_duplicates(["teachers", "method", "alpha", "rank"])
    fig = Figure(
        figsize=(max(6.0, 1.2 * len(tasks) + 0.3 * len(series)), 3.8), layout="constrained"
    )
    ax = fig.subplots()
    width = 0.8 / len(series)
    colors = _colors(len(series))
    for j, (_, s) in enumerate(series.iterrows()):
        sel = deltas[
            (deltas["teachers"] == s["teachers"])
            & (deltas["method"] == s["method"])
            & ((deltas["alpha"] == s["alpha"]) | (deltas["alpha"].isna() & pd.isna(s["alpha"])))
            & ((deltas["rank"] == s["rank"]) | (deltas["rank"].isna() & pd.isna(s["rank"])))
        ].set_index("task")
        x = np.arange(len(tasks)) - 0.4 + width * (j + 0.5)
        ax.bar(
            x,
            sel["delta"].reindex(tasks),
            width,
            label=_label(s, with_teachers=True),
            color=colors[j],
        )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("Δ vs GOLD (points)")
    ax.set_title("Delta against GOLD with the same teacher(s)")
    _legend(fig, [ax])
    return fig


def _plot_axis(lb: pd.DataFrame, axis: str, task: str) -> Figure:
    """Metric against a swept axis, one panel per teacher, one line per other setting."""
    other = "rank" if axis == "alpha" else "alpha"
    pts = lb[lb[axis].notna() & lb[task].notna()]
    if pts.empty:
        raise ValueError(f"No leaderboard row has a value for both '{axis}' and '{task}'.")
    teachers = list(dict.fromkeys(pts["teachers"]))
    fig, axes = _grid(len(teachers))
    for ax, teacher in zip(axes, teachers, strict=True):
        sub = pts[pts["teachers"] == teacher]
        for (method, fixed), line in sub.groupby(["method", other], dropna=False, sort=True):
            if line[axis].nunique() < 2:
                continue  # a lone point belongs to the other axis' sweep, not to this curve
            line = line.sort_values(axis)
            name = (
                method
                if pd.isna(fixed)
                else f"{method} {'K' if other == 'rank' else 'α'}={fixed:g}"
            )
            yerr = line[f"{task}_ci95"].fillna(0.0)  # one seed: no CI, a bare point
            ax.errorbar(line[axis], line[task], yerr=yerr, marker="o", capsize=3, label=name)
        if axis == "rank" and (sub[axis] > 0).all():
            ax.set_xscale("log", base=2)  # ranks are swept in powers of two
        ax.set_xlabel("alpha (1 = H-KL, 0 = P-KL)" if axis == "alpha" else "projection rank K")
        ax.set_ylabel(f"{task} (0-100)")
        ax.set_title(f"teacher: {teacher}")
        ax.legend(fontsize=7)
    return fig


def plot_metric_vs_alpha(lb: pd.DataFrame, task: str = common.AVG) -> Figure:
    """Metric (default the average) against alpha, per teacher; error bars are 95% CIs."""
    return _plot_axis(lb, "alpha", task)


def plot_metric_vs_rank(lb: pd.DataFrame, task: str = common.AVG) -> Figure:
    """Metric (default the average) against the projection rank K, per teacher."""
    return _plot_axis(lb, "rank", task)


def _series(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max over seeds per (teachers, method, alpha, rank, key, step)."""
    keys = [c for c in ("teachers", "method", "alpha", "rank") if c in curves.columns]
    return (
        curves.groupby([*keys, "key", "step"], dropna=False)["value"]
        .agg(["mean", "min", "max"])
        .reset_index()
    )


def _draw_series(ax: Axes, agg: pd.DataFrame, with_teachers: bool) -> None:
    keys = [c for c in ("teachers", "method", "alpha", "rank") if c in agg.columns]
    groups = list(agg.groupby(keys, dropna=False, sort=False))
    for color, (_, grp) in zip(_colors(len(groups)), groups, strict=True):
        grp = grp.sort_values("step")
        label = _label(grp.iloc[0], with_teachers)
        ax.plot(grp["step"], grp["mean"], label=label, color=color)
        ax.fill_between(grp["step"], grp["min"], grp["max"], alpha=0.2, color=color)


def plot_loss_curves(curves: pd.DataFrame, keys: list[str] | None = None) -> Figure:
    """Training curves of the loss components (``train/loss*`` keys), mean over seeds (band: range).

    Args:
        curves: Output of ``load.load_curves``.
        keys: Metric keys to draw, one panel each (default every key starting ``train/loss``).
    """
    keys = keys or sorted(k for k in curves["key"].unique() if k.startswith("train/loss"))
    if not keys:
        raise ValueError("The curves table has no 'train/loss*' key to plot.")
    agg = _series(curves[curves["key"].isin(keys)])
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        _draw_series(ax, agg[agg["key"] == key], with_teachers=True)
        ax.set_title(key)
        ax.set_xlabel("step")
    _legend(fig, axes)
    return fig


def plot_numeral_mass(curves: pd.DataFrame) -> Figure:
    """Student probability mass on multi-digit numerals over training, per method and teacher."""
    sub = curves[curves["key"] == NUMERAL_MASS]
    if sub.empty:
        raise ValueError(f"The curves table has no '{NUMERAL_MASS}' key.")
    agg = _series(sub)
    teachers = list(dict.fromkeys(agg["teachers"]))
    fig, axes = _grid(len(teachers))
    for ax, teacher in zip(axes, teachers, strict=True):
        _draw_series(ax, agg[agg["teachers"] == teacher], with_teachers=False)
        ax.set_title(f"teacher: {teacher}")
        ax.set_xlabel("step")
        ax.set_ylabel("multi-digit numeral mass")
        ax.legend(fontsize=7)
    return fig


def save(fig: Figure, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<path_stem>.png`` and ``<path_stem>.svg`` atomically; return both paths.

    Both are byte-identical from one run to the next: the SVG gets no date and its element ids are
    salted with a constant (matplotlib otherwise draws them at random), so a rebuilt report diffs
    clean against the committed one.
    """
    import matplotlib

    stem = Path(path_stem)
    out = []
    svg = {"metadata": {"Date": None}}
    for fmt, kwargs in (("png", {"dpi": 150}), ("svg", svg)):
        dest = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(dest) as tmp, matplotlib.rc_context({"svg.hashsalt": "xbench"}):
            fig.savefig(tmp, format=fmt, **kwargs)
        out.append(dest)
    return out[0], out[1]
