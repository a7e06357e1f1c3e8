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

The implementation lives beside this module (``load``, ``aggregate``, ``render``, ``plots``);
this module builds a report from them and is ``python -m xbench.report``'s entry point.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from xbench.io import atomic_path, write_text
from xbench.report.aggregate import (
    check_reference_averages,
    claims,
    compare_reference,
    deltas_vs_gold,
    last_step_values,
    leaderboard,
    paired_orderings,
    summarize_axis,
)
from xbench.report.common import (
    CURVE_COLUMNS,
    PAPER_EXPERIMENT,
    REFERENCE_CSV,
    ReportError,
)
from xbench.report.load import (
    find_run_dirs,
    load_curves,
    load_reference,
    load_runs,
)
from xbench.report.render import (
    format_claims,
    format_comparison,
    format_last_values,
    format_latex,
    format_markdown,
    format_paired,
)

__all__ = ["build_report", "main"]


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
    from xbench.report import plots  # matplotlib is only needed when figures are written

    figs = {"benchmarks": lambda: plots.plot_benchmarks(lb)}
    # Only when some non-GOLD row has a GOLD row with the same teacher(s): a sweep whose GOLD cells
    # use other teachers than the rest has deltas in no figure, and its report must still finish.
    if not deltas_vs_gold(lb).empty:
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
        ``comparison``, ``claims``, ``reference_check``, ``paired`` (the paper's orderings as
        paired deltas over seeds, when the runs hold both sides of one), ``fig_*``).
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
    if ref_csv is None:
        paired = paired_orderings(tidy)
        if not paired.empty:
            written["paired"] = _write_csv(paired, out / "paired_orderings.csv")
            md += "\n## The paper's orderings, paired over seeds\n\n" + format_paired(paired)
        mass = last_step_values(curves, "train/numeral_mass")
        if not mass.empty:
            written["numeral_mass"] = _write_csv(mass, out / "numeral_mass.csv")
            md += (
                "\n## Multi-digit numeral mass after training (mean ± 95% CI over seeds)\n\n"
                + format_last_values(mass)
            )
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
