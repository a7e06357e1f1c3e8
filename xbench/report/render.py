"""Rendering: leaderboard as markdown / LaTeX, comparison with the paper, claims tables.

Split out of ``xbench.report``; that module re-exports every public name here.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from xbench.report.aggregate import leaderboard_tasks
from xbench.report.common import AVG, BENCHMARK_ORDER, DELTA, fmt_axis


def _best_mask(lb: pd.DataFrame, col: str) -> pd.Series:
    """Rows holding the best (highest) value of a column at display precision (ties all win)."""
    vals = lb[col].round(2)
    if f"{col}_status" in lb.columns:
        vals = vals.where(lb[f"{col}_status"].isin(["ok", "partial"]))
    return vals.notna() & (vals == vals.max())


def _cell_text(row: pd.Series, t: str, pm: str) -> str:
    status = row[f"{t}_status"]
    if status in ("missing", "failed"):
        return status
    text = f"{row[t]:.2f}"
    if not pd.isna(row[f"{t}_ci95"]):
        text += f" {pm} {row[f'{t}_ci95']:.2f}"
    if status == "partial":
        text += f" ({row[f'{t}_n']}/{row['n_runs']})"
    return text


def _display_columns(lb: pd.DataFrame) -> list[str]:
    """Key columns worth showing: constant experiment/student go to the header, empty axes go."""
    cols = [c for c in ("experiment", "student") if lb[c].nunique() > 1]
    cols += ["teachers", "method"]
    cols += [c for c in ("alpha", "rank") if lb[c].notna().any()]
    if "semantics" in lb and lb["semantics"].notna().any():
        cols.append("semantics")
    return cols


def _table(
    lb: pd.DataFrame, bold: str, pm: str, escape: Any = str
) -> tuple[list[str], list[list[str]]]:
    tasks = leaderboard_tasks(lb)
    keys = _display_columns(lb)
    header = [*keys, "seeds", *tasks, "Δ GOLD"]
    best = {c: _best_mask(lb, c) for c in [*tasks, DELTA]}
    body = []
    for i, row in lb.iterrows():
        cells = [escape(_fmt_key(k, row[k])) for k in keys]
        cells.append(str(row["n_runs"]))
        for t in tasks:
            text = _cell_text(row, t, pm)
            cells.append(bold.format(text) if best[t][i] else text)
        d = "n/a" if pd.isna(row[DELTA]) else f"{row[DELTA]:+.2f}"
        cells.append(bold.format(d) if best[DELTA][i] else d)
        body.append(cells)
    return header, body


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _caption(lb: pd.DataFrame) -> str:
    consts = [f"{c}: {lb[c].iloc[0]}" for c in ("experiment", "student") if lb[c].nunique() == 1]
    return (
        " · ".join(consts)
        + f" · {int(lb['n_runs'].sum())} runs. Cells: mean ± 95% CI over seeds (t, n-1 dof; one "
        "seed: no CI); (k/n): k of n seeds have a value; avg: plain mean of the benchmarks "
        "(TASK@CLASS breakdown columns and probe columns such as mini_answer are not averaged); "
        "Δ GOLD: avg minus the GOLD avg with the same teacher(s); best per column in bold."
        + _mixed_presets(lb)
    )


def _fmt_key(key: str, value: object) -> str:
    if key in ("alpha", "rank"):
        return fmt_axis(value)
    if key == "semantics" and pd.isna(value):
        return "-"  # no teacher, no KD formula
    return str(value)


def _mixed_presets(lb: pd.DataFrame) -> str:
    """A warning when rows computed with different kd.semantics presets share the table."""
    if "semantics" not in lb:
        return ""
    presets = sorted(str(x) for x in lb["semantics"].dropna().unique())
    if len(presets) < 2:
        return ""
    return (
        f" WARNING: rows use different loss formulas (kd.semantics: {', '.join(presets)}); "
        "compare rows of one preset only (column semantics)."
    )


def format_markdown(lb: pd.DataFrame, title: str = "Leaderboard") -> str:
    """The leaderboard as a markdown table with a caption line."""
    header, body = _table(lb, "**{}**", "±")
    return f"## {title}\n\n{_caption(lb)}\n\n{_md_table(header, body)}\n"


def _tex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("#", r"\#"),
    ):
        text = text.replace(a, b)
    return text


def format_latex(lb: pd.DataFrame) -> str:
    """The leaderboard as a booktabs ``tabular`` (bold best per column, $\\pm$ CIs)."""
    header, body = _table(lb, r"\textbf{{{}}}", r"$\pm$", _tex_escape)
    header = [_tex_escape(h).replace("Δ", r"$\Delta$") for h in header]
    spec = "l" * len(_display_columns(lb)) + "r" * (len(header) - len(_display_columns(lb)))
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(r) + r" \\" for r in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "% " + _caption(lb).replace("Δ", "Delta") + "\n" + "\n".join(lines) + "\n"


def format_comparison(cmp: pd.DataFrame) -> str:
    """Ours beside the paper, one column per benchmark: ``ours / paper (diff)``."""
    if cmp.empty:
        return "No leaderboard row matches a row of the published table.\n"
    tasks = [t for t in [*BENCHMARK_ORDER, AVG] if t in set(cmp["task"])]
    keys = ["teachers", "method"] + [c for c in ("alpha", "rank") if cmp[c].notna().any()]
    header = [*keys, *tasks]
    body = []
    for key, grp in cmp.groupby(keys, dropna=False, sort=False):
        by_task = grp.set_index("task")
        cells = [
            fmt_axis(k) if n in ("alpha", "rank") else str(k)
            for n, k in zip(keys, key, strict=True)
        ]
        for t in tasks:
            if t not in by_task.index:
                cells.append("missing")
                continue
            r = by_task.loc[t]
            if r["status"] in ("missing", "failed"):
                cells.append(f"{r['status']} / {r['paper']:.2f}")
                continue
            note = " partial" if r["status"] == "partial" else ""  # not every seed has a value
            cells.append(f"{r['ours']:.2f} / {r['paper']:.2f} ({r['diff']:+.2f}){note}")
        body.append(cells)
    return _md_table(header, body) + "\n"


def format_claims(cl: pd.DataFrame, ours: bool = False) -> str:
    """The paper's headline deltas as a markdown table.

    Args:
        cl: Output of ``claims``.
        ours: The deltas come from our runs: label them "ours" and leave out the match column
            (a reproduction is compared with the published number, not required to equal it).
    """

    def num(v: float, fmt: str) -> str:
        return "missing" if pd.isna(v) else format(v, fmt)

    header = ["claim", "a", "b", "avg a", "avg b", "ours" if ours else "recomputed", "published"]
    header += [] if ours else ["matches"]
    body = []
    for _, r in cl.iterrows():
        cells = [r["claim"], r["a"], r["b"], num(r["avg_a"], ".3f"), num(r["avg_b"], ".3f")]
        cells += [num(r["delta"], "+.3f"), f"{r['published']:+g}"]
        cells += [] if ours else ["yes" if r["matches"] else "NO"]
        body.append(cells)
    return _md_table(header, body) + "\n"


def format_paired(paired: pd.DataFrame) -> str:
    """The paper's orderings as paired deltas: one row per (experiment, ordering, column)."""
    multi = paired["experiment"].nunique() > 1
    header = (["experiment"] if multi else []) + ["ordering", "column", "lower", "upper"]
    header += ["seeds", "mean lower", "mean upper", "Δ (upper - lower) ± 95% CI", "verdict"]
    body = []
    for _, r in paired.iterrows():
        ci = "" if pd.isna(r["ci95"]) else f" ± {r['ci95']:.2f}"
        cells = [r["experiment"]] if multi else []
        cells += [r["ordering"], r["task"], r["lower"], r["upper"], str(r["n"])]
        cells += [f"{r['lower_mean']:.2f}", f"{r['upper_mean']:.2f}", f"{r['delta']:+.2f}{ci}"]
        body.append([*cells, r["verdict"]])
    note = (
        "Δ is taken seed by seed on the same test items; the CI is a t interval over the "
        "per-seed deltas (n-1 dof). holds: the CI lies above 0; reversed: below 0; not "
        "separated: it spans 0.\n\n"
    )
    return note + _md_table(header, body) + "\n"


def format_last_values(df: pd.DataFrame) -> str:
    """``last_step_values`` as a markdown table (student probability, 3 decimals)."""
    keys = ["teachers", "method"] + [c for c in ("alpha", "rank") if df[c].notna().any()]
    body = []
    for _, r in df.iterrows():
        ci = "" if pd.isna(r["ci95"]) else f" ± {r['ci95']:.3f}"
        cells = [fmt_axis(r[k]) if k in ("alpha", "rank") else str(r[k]) for k in keys]
        body.append([*cells, str(r["n"]), f"{r['mean']:.3f}{ci}"])
    return _md_table([*keys, "seeds", "value"], body) + "\n"
