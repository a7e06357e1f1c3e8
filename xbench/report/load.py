"""Loading: run directories and the published table -> tidy and curves tables.

Split out of ``xbench.report``; that module re-exports every public name here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from xbench.io import read_jsonl
from xbench.report.common import (
    AVG,
    BREAKDOWN_SEP,
    CURVE_COLUMNS,
    NO_TEACHER,
    REFERENCE_CSV,
    REFERENCE_STUDENT,
    TIDY_COLUMNS,
    ReportError,
)
from xbench.rundir import STATUSES


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
        # Older run directories predate kd.semantics (empty); cells without a teacher have none.
        "semantics": _field(meta, "cell.semantics", meta_file, required=False),
        "seed": _number(seed, "cell.seed", meta_file),
        "status": status,
    }
    results_file = run_dir / "eval" / "results.json"
    if not results_file.is_file():
        return [{**base, "task": None, "metric": None, "value": math.nan, "stderr": math.nan}]
    results = _read_json(results_file)
    tasks = _field(results, "tasks", results_file)
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
        rows += _breakdown_rows(base, task, res, results, results_file)
    return rows


def _breakdown_rows(
    base: dict[str, Any], task: str, res: dict[str, Any], results: dict[str, Any], file: Path
) -> list[dict[str, Any]]:
    """Rows ``TASK@CLASS`` for lm-eval metrics ``METRIC@CLASS`` of the task's metric and filter.

    A task may score each document also within its class (``exact_match@len3``: the miniature's
    exact match over 3-digit answers); lm-eval keeps those in the raw results, on its 0-1 scale.
    """
    metric, filt = res.get("metric"), res.get("filter", "none")
    raw = (results.get("raw") or {}).get("results", {}).get(task, {})
    rows = []
    prefix, suffix = f"{metric}{BREAKDOWN_SEP}", f",{filt}"
    for key in sorted(raw):
        if not (key.startswith(prefix) and key.endswith(suffix)) or "_stderr" in key:
            continue
        cls = key[len(prefix) : -len(suffix)]
        value = 100.0 * _number(raw[key], f"raw.results.{task}.{key}", file)
        err = raw.get(f"{metric}{BREAKDOWN_SEP}{cls}_stderr{suffix}")
        stderr = 100.0 * _number(err, f"raw.results.{task}.stderr", file)
        rows.append(
            {
                **base,
                "task": f"{task}{BREAKDOWN_SEP}{cls}",
                "metric": metric,
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
                    # Table 1 came from the authors' NeMo RL code (no preset without a teacher)
                    "semantics": None if rec["teacher"] == NO_TEACHER else "authors",
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


_STRING_COLUMNS = (
    "run",
    "experiment",
    "student",
    "teachers",
    "method",
    "semantics",
    "task",
    "metric",
    "status",
)


def read_tidy(csv_path: str | Path) -> pd.DataFrame:
    """Read a tidy.csv back with the dtypes ``load_runs`` gives (strings stay strings)."""
    # Only empty fields are NaN: a teacher or task literally named "NA" or "null" stays a string.
    strings = {c: "object" for c in _STRING_COLUMNS}
    df = pd.read_csv(csv_path, dtype=strings, keep_default_na=False, na_values=[""])
    # Tables written before kd.semantics existed lack that column; it reads back empty.
    missing = [c for c in TIDY_COLUMNS if c not in df.columns and c != "semantics"]
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
