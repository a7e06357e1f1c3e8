"""Aggregation: leaderboard, CIs, deltas vs GOLD, reference comparison, claims, axis summaries.

Split out of ``xbench.report``; that module re-exports every public name here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xbench.report.common import (
    AVG,
    BENCHMARK_ORDER,
    BREAKDOWN_SEP,
    DELTA,
    KEY_COLUMNS,
    METHOD_ORDER,
    MODEL_ALIASES,
    NO_TEACHER,
    PROBE_METRICS,
    TASK_ALIASES,
    fmt_axis,
    is_breakdown,
)


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
    """Columns of a tidy table: the headline benchmarks (the paper's order first, then the rest
    alphabetically), each followed by its per-class breakdown, then the probes."""
    present = set(tidy["task"].dropna())
    probes = set(probe_tasks(tidy))
    known = [t for t in BENCHMARK_ORDER if t in present]
    ordered = known + sorted(present - set(known) - probes)
    ordered += sorted(probes)
    tops = [t for t in ordered if not is_breakdown(t)]
    out = []
    for t in tops:
        parts = [b for b in ordered if is_breakdown(b) and b.split(BREAKDOWN_SEP)[0] == t]
        out += [t, *sorted(parts)]
    return out + [t for t in ordered if t not in out]


def probe_tasks(tidy: pd.DataFrame) -> list[str]:
    """Tasks scored by a probe metric (``PROBE_METRICS``): shown, never in the headline avg."""
    rows = tidy[tidy["metric"].isin(PROBE_METRICS) & tidy["task"].notna()]
    return sorted(set(rows["task"]))


def headline_tasks(tidy: pd.DataFrame) -> list[str]:
    """The tasks the ``avg`` column averages: every benchmark, no breakdown, no probe.

    When every task is a probe, they are all averaged (so a probe-only suite still has an avg).
    """
    tasks = [t for t in tasks_of(tidy) if not is_breakdown(t)]
    probes = set(probe_tasks(tidy))
    return [t for t in tasks if t not in probes] or tasks


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
        column and ``avg`` (the plain mean of ``headline_tasks`` per run): ``T`` (mean over
        seeds), ``T_ci95`` (half-width, NaN for one seed), ``T_n`` (seeds with a value) and
        ``T_status`` (ok / partial / missing / failed); and
        ``delta_vs_gold``: avg minus the avg of GOLD with the same teacher(s) (NaN if none).
    """
    tasks, averaged = tasks_of(tidy), headline_tasks(tidy)
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
        per_run = per_run.reindex(columns=averaged)
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

        same = same[eq("alpha") & eq("rank") & eq("semantics")]
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
                f"{fmt_axis(r['rank' if axis == 'alpha' else 'alpha'])}"
            )
        )
        ci = "" if pd.isna(r["best_ci95"]) else f" ± {r['best_ci95']:.2f}"
        verdict = (
            "clearly ahead of the runner-up (CIs do not overlap)"
            if r["separated"]
            else f"within the 95% CI of the runner-up ({axis} {fmt_axis(r[f'second_{axis}'])}, "
            f"{r['second']:.2f})"
        )
        out.append(
            f"Teacher {r['teachers']} ({setting}): best {axis} = {fmt_axis(r[f'best_{axis}'])} "
            f"with {r['task']} {r['best']:.2f}{ci}; worst {axis} = {fmt_axis(r[f'worst_{axis}'])} "
            f"with {r['worst']:.2f}; spread {r['spread']:.2f} points over {r['n_points']} values; "
            f"the best is {verdict}."
        )
    return out


@dataclass(frozen=True)
class Ordering:
    """An ordering the paper reports: ``lower`` scores below ``upper``.

    Each side is (teacher roles joined by ``+``, method); ``""`` means no teacher. Roles stand
    for the paper's teachers and their miniature look-alikes (``TEACHER_ROLES``).
    """

    name: str
    lower: tuple[str, str]
    upper: tuple[str, str]


# Role -> the canonical names a study gives that teacher: A digit-splitting (Qwen3-4B), B with the
# student's numerals (Phi-4-mini), C the student's own tokenizer (Llama-3.2-3B).
TEACHER_ROLES = {"A": ("mini-a", QWEN), "B": ("mini-b", PHI), "C": ("mini-c", LLAMA3B)}
# The paper's GSM8K column: GOLD 2.56 < CE 10.25 < P-KL 15.54 and ULD 14.56 with the Qwen3
# teacher; GOLD 16.50 < H-KL 19.11 < H-KL + Llama-3B KD 20.39 with the Phi teacher.
PAPER_ORDERINGS = (
    Ordering("GOLD-A < CE", ("A", "gold"), ("", "ce")),
    Ordering("CE < P-KL-A", ("", "ce"), ("A", "pkl")),
    Ordering("GOLD-A < ULD-A", ("A", "gold"), ("A", "uld")),
    Ordering("GOLD-B < H-KL-B", ("B", "gold"), ("B", "hkl")),
    Ordering("H-KL-B < H-KL-B + KD-C", ("B", "hkl"), ("B+C", "hkl+kd")),
)
PAIRED_COLUMNS = [
    "experiment",
    "ordering",
    "task",
    "lower",
    "upper",
    "n",
    "lower_mean",
    "upper_mean",
    "delta",
    "ci95",
    "verdict",
]


def per_run_values(tidy: pd.DataFrame) -> pd.DataFrame:
    """One value per (run, task) of finished runs, plus each run's headline ``avg``.

    Returns:
        Columns experiment, teachers (canonical), method, alpha, rank, seed, task, value.
    """
    done = tidy[(tidy["status"] == "done") & tidy["task"].notna()]
    keys = ["run", "experiment", "teachers", "method", "alpha", "rank", "seed"]
    cols = [*keys, "task", "value"]
    if done.empty:
        return pd.DataFrame(columns=cols[1:])
    avg = done[done["task"].isin(headline_tasks(tidy))]
    n_tasks = avg.groupby("run")["task"].transform("nunique")
    avg = avg[n_tasks == len(headline_tasks(tidy))]  # a run missing a benchmark has no avg
    avg = avg.groupby(keys, dropna=False, as_index=False)["value"].mean().assign(task=AVG)
    out = pd.concat([done[cols], avg[cols]], ignore_index=True)
    out["teachers"] = out["teachers"].map(canon_model)
    return out.drop(columns="run")


def _role_names(roles: str) -> set[str]:
    if not roles:
        return {NO_TEACHER}
    parts = [TEACHER_ROLES[r] for r in roles.split("+")]
    return {"+".join(names) for names in zip(*parts, strict=True)}


def _verdict(delta: float, half: float, n: int) -> str:
    if n < 2 or pd.isna(half):
        return "one seed: no CI"
    if delta - half > 0:
        return "holds"
    if delta + half < 0:
        return "reversed"
    return "not separated"


def paired_orderings(
    tidy: pd.DataFrame, orderings: Sequence[Ordering] = PAPER_ORDERINGS
) -> pd.DataFrame:
    """Each ordering as a paired delta (upper - lower) over seeds, with its 95% CI.

    Both sides are evaluated on the same test items; the delta is taken seed by seed (seed s of
    one method against seed s of the other), so the CI is a t interval over the per-seed deltas
    (n-1 dof), not a difference of two independent intervals. Computed for the headline ``avg``
    and every task and breakdown column. An ordering whose sides are not both present (or not
    unique: several alpha/rank points) in an experiment is left out.

    Returns:
        Columns ``PAIRED_COLUMNS``; verdict: ``holds`` (the CI lies above 0), ``reversed``
        (below 0), ``not separated`` (it spans 0) or ``one seed: no CI``.
    """
    vals = per_run_values(tidy)
    rows = []
    for exp, ev in vals.groupby("experiment", sort=False):
        tasks = [AVG, *[t for t in tasks_of(tidy) if t in set(ev["task"])]]
        for o in orderings:
            sides = []
            for roles, method in (o.lower, o.upper):
                hit = ev[ev["teachers"].isin(_role_names(roles)) & (ev["method"] == method)]
                n_groups = len(hit[["teachers", "alpha", "rank"]].drop_duplicates())
                sides.append(hit if n_groups == 1 else None)
            if sides[0] is None or sides[1] is None:
                continue
            lo, up = sides
            for task in tasks:
                a = lo[lo["task"] == task].groupby("seed")["value"].mean()
                b = up[up["task"] == task].groupby("seed")["value"].mean()
                both = a.index.intersection(b.index)
                if len(both) == 0:
                    continue
                delta, half, n = t_ci95((b[both] - a[both]).to_numpy())
                rows.append(
                    {
                        "experiment": exp,
                        "ordering": o.name,
                        "task": task,
                        "lower": f"{lo['teachers'].iloc[0]} {o.lower[1]}",
                        "upper": f"{up['teachers'].iloc[0]} {o.upper[1]}",
                        "n": n,
                        "lower_mean": float(a[both].mean()),
                        "upper_mean": float(b[both].mean()),
                        "delta": delta,
                        "ci95": half,
                        "verdict": _verdict(delta, half, n),
                    }
                )
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def last_step_values(curves: pd.DataFrame, key: str) -> pd.DataFrame:
    """A logged quantity at each run's last logged step, mean ± 95% CI over seeds per cell.

    The miniature's diagnostic reads ``train/numeral_mass`` this way: the student's probability
    on multi-digit numeral tokens after training, per method (GOLD's terms alone included).

    Returns:
        Columns teachers, method, alpha, rank, n, mean, ci95 (empty when no run logged ``key``).
    """
    cols = ["teachers", "method", "alpha", "rank", "n", "mean", "ci95"]
    rows = curves[curves["key"] == key]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    last = rows.sort_values("step").groupby("run", sort=False).tail(1)
    out = []
    for k, grp in last.groupby(["teachers", "method", "alpha", "rank"], dropna=False, sort=False):
        mean, half, n = t_ci95(grp["value"].to_numpy())
        out.append(dict(zip(cols[:4], k, strict=True)) | {"n": n, "mean": mean, "ci95": half})
    frame = pd.DataFrame(out, columns=cols)
    return _sort_key(frame.assign(experiment="", student=""))[cols]
