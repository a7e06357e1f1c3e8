"""Run directories -> one tidy table -> leaderboards (md/csv/tex) and figures.

``python -m xbench.report PATH [--out DIR]`` rebuilds everything from the run directories alone
(``docs/contracts.md``), so a report never depends on a live process. ``PATH`` may also be the
published numbers (``results/reference`` or its CSV): the report then recomputes the paper's
averages and headline deltas (+3.82, +0.5, +1.3) from the per-benchmark values.

Conventions (recorded here because the contract leaves them open):

- ``eval/results.json`` values are already on the leaderboard's 0-100 scale (``xbench.evaluate``
  multiplies lm-eval's fractions by 100). A value outside [0, 100] is rejected, not guessed at.
- A leaderboard row is one (experiment, student, teachers, method, alpha, rank) group; the runs
  in a group are its seeds. Mean +- 95% CI uses the t-distribution with n-1 dof; one seed has no CI.
- The average is the plain mean of the benchmarks, computed per run and then averaged over the
  seeds, so it is only defined for runs that have every benchmark of the table.
- Only runs whose meta.json says ``done`` contribute values; a cell with no value is ``failed``
  when one of its runs failed and ``missing`` otherwise; a cell with fewer values than runs is
  ``partial`` and shows ``(k/n)``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xbench.io import atomic_path, read_jsonl, write_text

TIDY_COLUMNS = [
    "run",
    "experiment",
    "student",
    "teachers",
    "method",
    "alpha",
    "rank",
    "seed",
    "task",
    "metric",
    "value",
    "stderr",
    "status",
]
# alpha and rank ride along so that curves of different sweep points are never averaged together.
CURVE_COLUMNS = ["run", "method", "teachers", "alpha", "rank", "seed", "step", "key", "value"]
KEY_COLUMNS = ["experiment", "student", "teachers", "method", "alpha", "rank"]
STATUSES = ("pending", "running", "done", "failed")
AVG = "avg"
DELTA = "delta_vs_gold"
NO_TEACHER = "none"
# Column order of the paper's Table 1; other tasks follow alphabetically.
BENCHMARK_ORDER = ("mmlu", "gsm8k", "math", "winogrande", "hellaswag")
METHOD_ORDER = ("base", "ce", "kd", "uld", "gold", "pkl", "hkl", "xtoken")
PAPER_EXPERIMENT = "llama1b_vs_gold"
REFERENCE_CSV = Path(__file__).resolve().parents[1] / "results" / "reference" / "xtoken_table1.csv"
REFERENCE_STUDENT = "llama-3.2-1b"
# lm-eval task names that stand for a paper column.
TASK_ALIASES = {"minerva_math": "math", "hendrycks_math": "math", "mmlu_flan": "mmlu"}
# Config or Hub spellings of the paper's teachers -> the reference CSV's spelling.
MODEL_ALIASES = {
    "phi-4-mini": "phi-4-mini-instruct",
    "phi4-mini": "phi-4-mini-instruct",
    "phi4-mini-instruct": "phi-4-mini-instruct",
    "qwen3-4b-base": "qwen3-4b",
    "llama3.2-3b": "llama-3.2-3b",
    "llama-3.2-3b-instruct": "llama-3.2-3b",
    "llama3-2-3b": "llama-3.2-3b",
}


class ReportError(ValueError):
    """A bad input to the report, described in one sentence."""


@dataclass(frozen=True)
class Claim:
    """A headline delta of the paper: avg(a) - avg(b), each a (teachers, method) row."""

    name: str
    a: tuple[str, str]
    b: tuple[str, str]
    published: float
    decimals: int


PHI, QWEN, LLAMA3B = "phi-4-mini-instruct", "qwen3-4b", "llama-3.2-3b"
PAPER_CLAIMS = (
    Claim("+3.82", (QWEN, "pkl"), (QWEN, "gold"), 3.82, 2),
    Claim("+0.5", (PHI, "hkl"), (PHI, "gold"), 0.5, 1),
    Claim("+1.3", (f"{PHI}+{LLAMA3B}", "hkl+kd"), (PHI, "hkl"), 1.3, 1),
)


# ----------------------------------------------------------------------------- loading


def find_run_dirs(path: str | Path) -> list[Path]:
    """Run directories (folders holding a meta.json) under ``path``, sorted."""
    root = Path(path)
    found = [root] if (root / "meta.json").is_file() else []
    found += [p.parent for p in root.rglob("*/meta.json") if "checkpoints" not in p.parts]
    return sorted(set(found))


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{file} is not valid JSON ({exc}).") from exc


def _field(obj: Any, dotted: str, file: Path, *, required: bool = True) -> Any:
    """``obj[a][b]`` for ``dotted = "a.b"``; a missing required field names file and field."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            if required:
                raise ReportError(f"{file} is missing the field '{dotted}'.")
            return None
        obj = obj[part]
    return obj


def _number(value: Any, dotted: str, file: Path) -> float:
    """A float from a JSON scalar; ``None`` and lm-eval's "N/A" stderr become NaN."""
    if value is None or value == "N/A":
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"{file}: field '{dotted}' must be a number, got {value!r}.")
    return float(value)


def _join(value: Any, dotted: str, file: Path) -> str:
    """Teachers / method as one ``+``-joined string (the contract's multi-teacher spelling)."""
    if isinstance(value, str):
        return value or NO_TEACHER
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "+".join(value) if value else NO_TEACHER
    raise ReportError(f"{file}: field '{dotted}' must be a string or a list of strings.")


def _run_rows(run_dir: Path, root: Path) -> list[dict[str, Any]]:
    """Tidy rows of one run: one per evaluated task, or one task-less row if none."""
    meta_file = run_dir / "meta.json"
    meta = _read_json(meta_file)
    status = _field(meta, "status", meta_file)
    if status not in STATUSES:
        raise ReportError(f"{meta_file}: field 'status' must be one of {STATUSES}, got {status!r}.")
    cell = _field(meta, "cell", meta_file)
    seed = _field(cell, "seed", meta_file) if isinstance(cell, dict) else None
    base = {
        "run": run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name,
        "experiment": str(_field(meta, "experiment", meta_file)),
        "student": str(_field(meta, "cell.student", meta_file)),
        "teachers": _join(_field(meta, "cell.teachers", meta_file), "cell.teachers", meta_file),
        "method": _join(_field(meta, "cell.method", meta_file), "cell.method", meta_file),
        "alpha": _number(_field(meta, "cell.alpha", meta_file, required=False), "alpha", meta_file),
        "rank": _number(_field(meta, "cell.rank", meta_file, required=False), "rank", meta_file),
        "seed": _number(seed, "cell.seed", meta_file),
        "status": status,
    }
    results_file = run_dir / "eval" / "results.json"
    if not results_file.is_file():
        return [{**base, "task": None, "metric": None, "value": math.nan, "stderr": math.nan}]
    tasks = _field(_read_json(results_file), "tasks", results_file)
    if not isinstance(tasks, dict):
        raise ReportError(f"{results_file}: field 'tasks' must be an object of task -> result.")
    rows = []
    for task, res in tasks.items():
        value = _number(_field(res, "value", results_file), f"tasks.{task}.value", results_file)
        if not 0.0 <= value <= 100.0:
            raise ReportError(
                f"{results_file}: field 'tasks.{task}.value' = {value} is outside [0, 100]; "
                "results.json holds percentages (lm-eval fraction x 100)."
            )
        stderr = _number(res.get("stderr"), f"tasks.{task}.stderr", results_file)
        rows.append(
            {
                **base,
                "task": task,
                "metric": _field(res, "metric", results_file, required=False),
                "value": value,
                "stderr": stderr,
            }
        )
    return rows


def _tidy_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    for col in ("alpha", "rank", "seed", "value", "stderr"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def load_runs(path: str | Path) -> pd.DataFrame:
    """Read every run directory under ``path`` into one tidy table.

    Args:
        path: A run directory or any folder above run directories (searched recursively).

    Returns:
        One row per (run, task) with columns ``TIDY_COLUMNS``; values and stderrs on a 0-100
        scale; a run without ``eval/results.json`` gives one row with an empty task.

    Raises:
        ReportError: No run directory under ``path``, or a malformed meta.json / results.json.
    """
    root = Path(path)
    if not root.exists():
        raise ReportError(f"{root} does not exist.")
    run_dirs = find_run_dirs(root)
    if not run_dirs:
        raise ReportError(f"No run directories (folders with a meta.json) found under {root}.")
    return _tidy_frame([row for d in run_dirs for row in _run_rows(d, root)])


def load_reference(csv_path: str | Path = REFERENCE_CSV) -> pd.DataFrame:
    """The published Table 1 as a tidy table (experiment ``xtoken_table1``, one seed, no stderr).

    Args:
        csv_path: ``xtoken_table1.csv`` (columns setup, teacher, method, benchmarks..., avg).

    Returns:
        Tidy rows for every benchmark column; the published ``avg`` is not a task, it is what the
        recomputed average is checked against (``check_reference_averages``).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ReportError(f"Reference table {csv_path} not found.")
    raw = pd.read_csv(csv_path)
    for col in ("setup", "teacher", "method", AVG):
        if col not in raw.columns:
            raise ReportError(f"{csv_path} is missing the column '{col}'.")
    tasks = [c for c in raw.columns if c not in ("setup", "teacher", "method", AVG)]
    rows = []
    for rec in raw.to_dict("records"):
        for task in tasks:
            rows.append(
                {
                    "run": f"xtoken_table1/{rec['setup']}/{rec['teacher']}/{rec['method']}",
                    "experiment": "xtoken_table1",
                    "student": REFERENCE_STUDENT,
                    "teachers": rec["teacher"],
                    "method": rec["method"],
                    "seed": 0,
                    "task": task,
                    "metric": "published",
                    "value": rec[task],
                    "status": "done",
                }
            )
    tidy = _tidy_frame(rows)
    if tidy["value"].isna().any():
        raise ReportError(f"{csv_path} has an empty or non-numeric benchmark value.")
    return tidy


_STRING_COLUMNS = ("run", "experiment", "student", "teachers", "method", "task", "metric", "status")


def read_tidy(csv_path: str | Path) -> pd.DataFrame:
    """Read a tidy.csv back with the dtypes ``load_runs`` gives (strings stay strings)."""
    # Only empty fields are NaN: a teacher or task literally named "NA" or "null" stays a string.
    strings = {c: "object" for c in _STRING_COLUMNS}
    df = pd.read_csv(csv_path, dtype=strings, keep_default_na=False, na_values=[""])
    missing = [c for c in TIDY_COLUMNS if c not in df.columns]
    if missing:
        raise ReportError(f"{csv_path} is not a tidy table: column '{missing[0]}' is missing.")
    return _tidy_frame(df.to_dict("records"))


def read_curves(csv_path: str | Path) -> pd.DataFrame:
    """Read a curves.csv back (``load_curves``' columns and dtypes)."""
    strings = {c: "object" for c in ("run", "method", "teachers", "key")}
    df = pd.read_csv(csv_path, dtype=strings, keep_default_na=False, na_values=[""])
    missing = [c for c in CURVE_COLUMNS if c not in df.columns]
    if missing:
        raise ReportError(f"{csv_path} is not a curves table: column '{missing[0]}' is missing.")
    return df[CURVE_COLUMNS]


def load_curves(path: str | Path) -> pd.DataFrame:
    """Training curves of every run under ``path`` as a tidy table.

    Args:
        path: A run directory or a folder above run directories.

    Returns:
        Columns ``CURVE_COLUMNS``: one row per (run, step, numeric metric key). Runs without a
        metrics.jsonl contribute nothing; a torn last line (a job killed mid-append) is ignored.
    """
    root = Path(path)
    frames = []
    for run_dir in find_run_dirs(root):
        metrics_file = run_dir / "metrics.jsonl"
        if not metrics_file.is_file():
            continue
        try:
            records = read_jsonl(metrics_file)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{metrics_file} has a malformed line ({exc}).") from exc
        if not records:
            continue
        ident = _run_rows_meta_only(run_dir, root)
        long = pd.DataFrame(records)
        if "step" not in long.columns:
            raise ReportError(f"{metrics_file} is missing the field 'step'.")
        long = long.melt(id_vars="step", var_name="key", value_name="value")
        long["value"] = pd.to_numeric(long["value"], errors="coerce")
        long = long.dropna(subset=["value"])  # strings / nulls are not curves
        frames.append(long.assign(**ident))
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    out = pd.concat(frames, ignore_index=True)[CURVE_COLUMNS]
    out["step"] = out["step"].astype(int)
    out["value"] = out["value"].astype(float)
    return out


def _run_rows_meta_only(run_dir: Path, root: Path) -> dict[str, Any]:
    row = _run_rows(run_dir, root)[0]
    return {k: row[k] for k in ("run", "method", "teachers", "alpha", "rank", "seed")}


# ----------------------------------------------------------------------------- aggregation


def t_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """Mean, 95% CI half-width (t-distribution, n-1 dof) and n; one value -> NaN half-width."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    from scipy.stats import t  # scipy comes with lm-eval (scikit-learn); imported when needed

    half = float(t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return float(x.mean()), half, n


def tasks_of(tidy: pd.DataFrame) -> list[str]:
    """Benchmarks of a tidy table: the paper's order first, then the rest alphabetically."""
    present = set(tidy["task"].dropna())
    known = [t for t in BENCHMARK_ORDER if t in present]
    return known + sorted(present - set(known))


def leaderboard_tasks(lb: pd.DataFrame) -> list[str]:
    """Value columns of a leaderboard (benchmarks then ``avg``), in order."""
    return [c for c in lb.columns if f"{c}_status" in lb.columns]


def _sort_key(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered like Table 1: no teacher, single, multi; then method order, alpha, rank."""
    n_teachers = df["teachers"].map(lambda t: 0 if t == NO_TEACHER else t.count("+") + 1)
    first = df["method"].map(lambda m: m.split("+")[0])
    method_rank = first.map(lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)
    order = df.assign(_nt=n_teachers, _mr=method_rank).sort_values(
        ["experiment", "student", "_nt", "teachers", "_mr", "method", "alpha", "rank"],
        na_position="first",
        kind="stable",
    )
    return order.drop(columns=["_nt", "_mr"]).reset_index(drop=True)


def _cell(values: Iterable[float], n_runs: int, any_failed: bool) -> dict[str, Any]:
    mean, half, n = t_ci95(list(values))
    if n == 0:
        status = "failed" if any_failed else "missing"
    else:
        status = "ok" if n == n_runs else "partial"
    return {"mean": mean, "ci95": half, "n": n, "status": status}


def leaderboard(tidy: pd.DataFrame) -> pd.DataFrame:
    """Aggregate a tidy table into one leaderboard row per group of seeds.

    Args:
        tidy: Output of ``load_runs`` / ``load_reference``.

    Returns:
        One row per (experiment, student, teachers, method, alpha, rank) with ``n_runs``; for each
        benchmark and ``avg``: ``T`` (mean over seeds), ``T_ci95`` (half-width, NaN for one seed),
        ``T_n`` (seeds with a value) and ``T_status`` (ok / partial / missing / failed); and
        ``delta_vs_gold``: avg minus the avg of GOLD with the same teacher(s) (NaN if none).
    """
    tasks = tasks_of(tidy)
    rows = []
    for key, grp in tidy.groupby(KEY_COLUMNS, dropna=False, sort=False):
        runs = grp.drop_duplicates("run")
        any_failed = bool((runs["status"] == "failed").any())
        done = grp[(grp["status"] == "done") & grp["task"].notna()]
        row: dict[str, Any] = dict(zip(KEY_COLUMNS, key, strict=True)) | {"n_runs": len(runs)}
        cells = {
            t: _cell(done.loc[done["task"] == t, "value"], len(runs), any_failed) for t in tasks
        }
        # Average per run first (the paper's plain mean of the benchmarks), then over seeds.
        per_run = done.pivot_table(index="run", columns="task", values="value", aggfunc="mean")
        per_run = per_run.reindex(columns=tasks)
        cells[AVG] = _cell(per_run.dropna().mean(axis=1), len(runs), any_failed)
        for t, c in cells.items():
            row |= {
                t: c["mean"],
                f"{t}_ci95": c["ci95"],
                f"{t}_n": c["n"],
                f"{t}_status": c["status"],
            }
        rows.append(row)
    lb = _sort_key(pd.DataFrame(rows))
    lb[DELTA] = _delta_vs_gold(lb)
    cols = [*KEY_COLUMNS, "n_runs", *tasks, AVG, DELTA]
    for suffix in ("ci95", "n", "status"):
        cols += [f"{t}_{suffix}" for t in [*tasks, AVG]]
    return lb[cols]


def _gold_row(lb: pd.DataFrame, row: pd.Series, method: str = "gold") -> pd.Series | None:
    """The GOLD row with the same experiment, student and teachers (same alpha/rank if several)."""
    same = lb[
        (lb["experiment"] == row["experiment"])
        & (lb["student"] == row["student"])
        & (lb["teachers"] == row["teachers"])
        & (lb["method"] == method)
    ]
    if len(same) > 1:
        # NaN == NaN is False, so compare alpha/rank with isna-aware equality.
        def eq(col: str) -> pd.Series:
            return (same[col] == row[col]) | (same[col].isna() & pd.isna(row[col]))

        same = same[eq("alpha") & eq("rank")]
    return same.iloc[0] if len(same) == 1 else None


def _delta_vs_gold(lb: pd.DataFrame) -> pd.Series:
    out = []
    for _, row in lb.iterrows():
        gold = _gold_row(lb, row)
        out.append(math.nan if gold is None else row[AVG] - gold[AVG])
    return pd.Series(out, index=lb.index, dtype=float)


def deltas_vs_gold(lb: pd.DataFrame) -> pd.DataFrame:
    """Per-benchmark and average deltas of every non-GOLD row against its GOLD row (long form).

    Returns:
        Columns teachers, method, alpha, rank, task, delta (rows without a GOLD row are left out:
        there is nothing to compare them with).
    """
    rows = []
    for _, row in lb[lb["method"] != "gold"].iterrows():
        gold = _gold_row(lb, row)
        if gold is None:
            continue
        for t in leaderboard_tasks(lb):
            rows.append(
                {k: row[k] for k in ("teachers", "method", "alpha", "rank")}
                | {"task": t, "delta": row[t] - gold[t]}
            )
    return pd.DataFrame(rows, columns=["teachers", "method", "alpha", "rank", "task", "delta"])


def canon_model(name: str) -> str:
    """A model name as the reference CSV spells it: lower case, no Hub org, dashes, aliases."""
    parts = [p.split("/")[-1].lower().replace("_", "-") for p in name.split("+")]
    return "+".join(MODEL_ALIASES.get(p, p) for p in parts)


def _find(lb: pd.DataFrame, teachers: str, method: str) -> pd.Series | None:
    hit = lb[(lb["teachers"].map(canon_model) == teachers) & (lb["method"] == method)]
    return hit.iloc[0] if len(hit) == 1 else None


def claims(lb: pd.DataFrame, claims: Sequence[Claim] = PAPER_CLAIMS) -> pd.DataFrame:
    """Recompute the paper's headline deltas from a leaderboard's averages.

    Returns:
        One row per claim: claim, a, b, avg_a, avg_b, delta, published and ``matches`` (the delta
        rounded to the published precision equals the published number); NaN where a row is absent.
    """
    rows = []
    for c in claims:
        ra, rb = _find(lb, *c.a), _find(lb, *c.b)
        avg_a = math.nan if ra is None else float(ra[AVG])
        avg_b = math.nan if rb is None else float(rb[AVG])
        delta = avg_a - avg_b
        rows.append(
            {
                "claim": c.name,
                "a": " ".join(c.a),
                "b": " ".join(c.b),
                "avg_a": avg_a,
                "avg_b": avg_b,
                "delta": delta,
                "published": c.published,
                "matches": bool(round(delta, c.decimals) == c.published),
            }
        )
    return pd.DataFrame(rows)


def check_reference_averages(csv_path: str | Path, lb: pd.DataFrame) -> pd.DataFrame:
    """Compare the recomputed averages of the reference leaderboard with the CSV's ``avg``.

    Returns:
        teachers, method, recomputed, published, ``matches`` (within the CSV's rounding, 0.005).
    """
    raw = pd.read_csv(csv_path)
    out = raw[["teacher", "method", AVG]].rename(columns={"teacher": "teachers", AVG: "published"})
    merged = out.merge(lb[["teachers", "method", AVG]], on=["teachers", "method"], how="left")
    merged = merged.rename(columns={AVG: "recomputed"})
    merged["matches"] = (merged["recomputed"] - merged["published"]).abs() <= 0.005 + 1e-9
    return merged[["teachers", "method", "recomputed", "published", "matches"]]


def compare_reference(lb: pd.DataFrame, ref_lb: pd.DataFrame) -> pd.DataFrame:
    """Our leaderboard beside the published one, long form: one row per matched cell.

    Rows are matched on canonical teachers and method; our task names go through
    ``TASK_ALIASES``. Returns teachers, method, alpha, rank, task, ours, paper, diff (ours - paper)
    and our cell's status (a failed or missing cell keeps its row, with NaN values).
    """
    ref_tasks = leaderboard_tasks(ref_lb)
    ours = [t for t in leaderboard_tasks(lb) if t != AVG]
    # An average over other benchmarks than the paper's is a different quantity: compare it
    # only when both tables average the same benchmark set.
    same_set = {TASK_ALIASES.get(t, t) for t in ours} == set(ref_tasks) - {AVG}
    rows = []
    for _, row in lb.iterrows():
        ref = _find(ref_lb, canon_model(row["teachers"]), row["method"])
        if ref is None:
            continue
        for t in [*ours, AVG] if same_set else ours:
            rt = TASK_ALIASES.get(t, t)
            if rt not in ref_tasks:
                continue
            rows.append(
                {k: row[k] for k in ("teachers", "method", "alpha", "rank")}
                | {"task": rt, "ours": row[t], "paper": ref[rt], "diff": row[t] - ref[rt]}
                | {"status": row[f"{t}_status"]}
            )
    cols = ["teachers", "method", "alpha", "rank", "task", "ours", "paper", "diff", "status"]
    return pd.DataFrame(rows, columns=cols)


def summarize_axis(lb: pd.DataFrame, axis: str, task: str = AVG) -> pd.DataFrame:
    """Best / worst value of a swept axis (``alpha`` or ``rank``) per teacher and fixed setting.

    Args:
        lb: A leaderboard.
        axis: ``"alpha"`` or ``"rank"``; rows where it is NaN are ignored.
        task: The metric column to rank by (a benchmark or ``avg``).

    Returns:
        One row per (experiment, student, teachers, method, other axis) with at least two points:
        best/second/worst axis values with their means and CIs, ``spread`` (best - worst) and
        ``separated`` (the best's CI lies above the runner-up's; False when a CI is unknown).
    """
    other = "rank" if axis == "alpha" else "alpha"
    pts = lb[lb[axis].notna() & lb[task].notna()]
    rows = []
    fixed = ["experiment", "student", "teachers", "method", other]
    for key, grp in pts.groupby(fixed, dropna=False, sort=False):
        if grp[axis].nunique() < 2:
            continue
        g = grp.sort_values(task, ascending=False, kind="stable")
        best, second, worst = g.iloc[0], g.iloc[1], g.iloc[-1]
        lo = best[task] - best[f"{task}_ci95"]
        hi = second[task] + second[f"{task}_ci95"]
        rows.append(
            dict(zip(fixed, key, strict=True))
            | {
                "task": task,
                "n_points": len(g),
                f"best_{axis}": best[axis],
                "best": best[task],
                "best_ci95": best[f"{task}_ci95"],
                f"second_{axis}": second[axis],
                "second": second[task],
                f"worst_{axis}": worst[axis],
                "worst": worst[task],
                "spread": best[task] - worst[task],
                "separated": bool(lo > hi),  # NaN comparisons are False: unknown CI -> not shown
            }
        )
    return pd.DataFrame(rows)


def axis_conclusions(summary: pd.DataFrame, axis: str) -> list[str]:
    """One sentence per row of ``summarize_axis``, built from its numbers."""
    out = []
    for _, r in summary.iterrows():
        setting = (
            r["method"]
            if pd.isna(r.get("rank" if axis == "alpha" else "alpha"))
            else (
                f"{r['method']}, {'rank' if axis == 'alpha' else 'alpha'} "
                f"{_fmt_axis(r['rank' if axis == 'alpha' else 'alpha'])}"
            )
        )
        ci = "" if pd.isna(r["best_ci95"]) else f" ± {r['best_ci95']:.2f}"
        verdict = (
            "clearly ahead of the runner-up (CIs do not overlap)"
            if r["separated"]
            else f"within the 95% CI of the runner-up ({axis} {_fmt_axis(r[f'second_{axis}'])}, "
            f"{r['second']:.2f})"
        )
        out.append(
            f"Teacher {r['teachers']} ({setting}): best {axis} = {_fmt_axis(r[f'best_{axis}'])} "
            f"with {r['task']} {r['best']:.2f}{ci}; worst {axis} = {_fmt_axis(r[f'worst_{axis}'])} "
            f"with {r['worst']:.2f}; spread {r['spread']:.2f} points over {r['n_points']} values; "
            f"the best is {verdict}."
        )
    return out


# ----------------------------------------------------------------------------- rendering


def _fmt_axis(v: Any) -> str:
    if pd.isna(v):
        return "–"
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"


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
        cells = [escape(_fmt_axis(row[k]) if k in ("alpha", "rank") else str(row[k])) for k in keys]
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
        "seed: no CI); (k/n): k of n seeds have a value; avg: plain mean of the benchmarks; "
        "Δ GOLD: avg minus the GOLD avg with the same teacher(s); best per column in bold."
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
            _fmt_axis(k) if n in ("alpha", "rank") else str(k)
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


# ----------------------------------------------------------------------------- building


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def _problems(tidy: pd.DataFrame) -> str:
    """Runs that contribute no values, with their status and error: nothing is dropped silently."""
    runs = tidy.drop_duplicates("run")
    bad = runs[(runs["status"] != "done") | runs["run"].isin(tidy.loc[tidy["task"].isna(), "run"])]
    if bad.empty:
        return ""
    lines = [f"- `{r['run']}`: {r['status']}" for _, r in bad.iterrows()]
    return "\n### Runs without results\n\n" + "\n".join(lines) + "\n"


def _figures(lb: pd.DataFrame, curves: pd.DataFrame, fig_dir: Path) -> dict[str, Path]:
    from xbench import plots  # matplotlib is only needed when figures are written

    figs = {"benchmarks": lambda: plots.plot_benchmarks(lb)}
    if lb[DELTA].notna().any() and (lb["method"] != "gold").any():
        figs["delta_vs_gold"] = lambda: plots.plot_delta_vs_gold(lb)
    if not summarize_axis(lb, "alpha").empty:
        figs["metric_vs_alpha"] = lambda: plots.plot_metric_vs_alpha(lb)
    if not summarize_axis(lb, "rank").empty:
        figs["metric_vs_rank"] = lambda: plots.plot_metric_vs_rank(lb)
    if curves["key"].str.startswith("train/loss").any():
        figs["loss_curves"] = lambda: plots.plot_loss_curves(curves)
    if (curves["key"] == plots.NUMERAL_MASS).any():
        figs["numeral_mass"] = lambda: plots.plot_numeral_mass(curves)
    out = {}
    for name, make in figs.items():
        fig = make()
        png, svg = plots.save(fig, fig_dir / name)
        out[f"fig_{name}_png"], out[f"fig_{name}_svg"] = png, svg
    return out


def _log_wandb(lb: pd.DataFrame, project: str | None) -> None:
    import wandb  # optional: only when asked; tests set WANDB_MODE=offline

    display = lb.copy()
    for col in display.columns:  # wandb.Table wants plain, JSON-friendly cells
        if display[col].dtype == object:
            display[col] = display[col].astype(str)
    with wandb.init(project=project or "xbench", job_type="report") as run:
        run.log({"leaderboard": wandb.Table(dataframe=display)})


def build_report(
    path: str | Path,
    out_dir: str | Path | None = None,
    *,
    reference: str | Path | None = None,
    figures: bool = True,
    use_wandb: bool = False,
    wandb_project: str | None = None,
) -> dict[str, Path]:
    """Rebuild the tidy table, leaderboards and figures from ``path``.

    Args:
        path: Folder of run directories, or the published numbers (``results/reference`` or its
            CSV): then the reference leaderboard is built and its averages and headline deltas are
            recomputed and checked.
        out_dir: Where to write (default ``<path>/report``, or beside the CSV).
        reference: Published CSV to show beside our numbers; by default used when a run's
            experiment is the paper's (``llama1b_vs_gold``).
        figures: Write figures into ``out_dir/figures``.
        use_wandb: Log the leaderboard as a ``wandb.Table``.
        wandb_project: wandb project name (default ``xbench``).

    Returns:
        Name -> written path (``tidy``, ``curves``, ``leaderboard_md`` / ``_csv`` / ``_tex``,
        ``comparison``, ``claims``, ``reference_check``, ``fig_*``).
    """
    path = Path(path)
    ref_csv = _reference_input(path)
    if ref_csv is not None:
        tidy, curves = load_reference(ref_csv), pd.DataFrame(columns=CURVE_COLUMNS)
        default_out = ref_csv.parent / "report"
    else:
        tidy, curves = load_runs(path), load_curves(path)
        default_out = path / "report"
    out = Path(out_dir) if out_dir is not None else default_out
    lb = leaderboard(tidy)
    written = {"tidy": _write_csv(tidy, out / "tidy.csv")}
    if not curves.empty:
        written["curves"] = _write_csv(curves, out / "curves.csv")
    md = format_markdown(lb, "Published X-Token Table 1" if ref_csv else "Leaderboard")
    md += _problems(tidy)
    if ref_csv is not None:
        check = check_reference_averages(ref_csv, lb)
        cl = claims(lb)
        written["reference_check"] = _write_csv(check, out / "reference_check.csv")
        written["claims"] = _write_csv(cl, out / "claims.csv")
        n_ok = int(check["matches"].sum())
        md += (
            f"\nAverages recomputed from the benchmarks match the published avg column for "
            f"{n_ok}/{len(check)} rows (tolerance 0.005).\n\n### Headline deltas\n\n"
            + format_claims(cl)
        )
    else:
        reference = reference or (
            REFERENCE_CSV if (tidy["experiment"] == PAPER_EXPERIMENT).any() else None
        )
        if reference is not None:
            ref_lb = leaderboard(load_reference(reference))
            cmp = compare_reference(lb, ref_lb)
            written["comparison"] = _write_csv(cmp, out / "comparison.csv")
            md += "\n## Beside the published numbers (ours / paper (ours - paper))\n\n"
            md += format_comparison(cmp)
            md += "\n### Headline deltas on our runs\n\n" + format_claims(claims(lb), ours=True)
    written["leaderboard_md"] = out / "leaderboard.md"
    write_text(written["leaderboard_md"], md)
    written["leaderboard_csv"] = _write_csv(lb, out / "leaderboard.csv")
    written["leaderboard_tex"] = out / "leaderboard.tex"
    write_text(written["leaderboard_tex"], format_latex(lb))
    if figures:
        written |= _figures(lb, curves, out / "figures")
    if use_wandb:
        _log_wandb(lb, wandb_project)
    return written


def _reference_input(path: Path) -> Path | None:
    """The published CSV if ``path`` is it, or a folder holding it and no run directory."""
    if path.is_file() and path.suffix == ".csv":
        return path
    candidate = path / REFERENCE_CSV.name
    if candidate.is_file() and not find_run_dirs(path):
        return candidate
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xbench.report PATH [--out DIR] [--no-figures] [--wandb]``."""
    parser = argparse.ArgumentParser(
        prog="python -m xbench.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("path", help="folder of run directories, or results/reference")
    parser.add_argument("--out", default=None, help="output folder (default PATH/report)")
    parser.add_argument("--reference", default=None, help="published CSV to show beside ours")
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument("--wandb", action="store_true", help="log the leaderboard to wandb")
    parser.add_argument("--wandb-project", default=None)
    args = parser.parse_args(argv)
    try:
        written = build_report(
            args.path,
            args.out,
            reference=args.reference,
            figures=not args.no_figures,
            use_wandb=args.wandb,
            wandb_project=args.wandb_project,
        )
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(written["leaderboard_md"].read_text(encoding="utf-8"))
    print("written:", *(f"  {p}" for p in written.values()), sep="\n")
    ok = True
    if "claims" in written:
        ok = bool(pd.read_csv(written["claims"])["matches"].all())
        ok &= bool(pd.read_csv(written["reference_check"])["matches"].all())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
