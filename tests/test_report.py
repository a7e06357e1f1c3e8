"""Report: run dirs -> tidy table -> leaderboard, with numbers computed by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures.rundirs.synth import write_run

from xbench.report import aggregate, build, common, load, render

DELTA_COL = "delta_vs_gold"

REPO = Path(__file__).resolve().parents[1]
# 97.5% quantiles of Student's t, from a printed table: 1 and 2 degrees of freedom.
T1, T2 = 12.706204736174707, 4.302652729749464


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Known values (fractions) -> known leaderboard.

    qwen3-4b gold, 3 seeds: mmlu .40 .42 .44, gsm8k .02 .03 .04
    qwen3-4b pkl, 2 seeds:  mmlu .45 .47,     gsm8k .15 .17
    qwen3-4b hkl, 1 seed:   mmlu .50,         gsm8k not evaluated  -> missing
    qwen3-4b uld, 1 seed:   failed                                  -> failed
    none ce, 2 seeds:       seed 0 mmlu .41 gsm8k .10; seed 1 still running -> partial (1/2)
    """
    q = ["qwen3-4b"]
    for seed, (m, g) in enumerate([(0.40, 0.02), (0.42, 0.03), (0.44, 0.04)]):
        write_run(tmp_path, f"gold/s{seed}", teachers=q, method="gold", seed=seed,
                  scores={"mmlu": m, "gsm8k": g})  # fmt: skip
    for seed, (m, g) in enumerate([(0.45, 0.15), (0.47, 0.17)]):
        write_run(tmp_path, f"pkl/s{seed}", teachers=q, method="pkl", seed=seed,
                  scores={"mmlu": m, "gsm8k": g})  # fmt: skip
    write_run(tmp_path, "hkl/s0", teachers=q, method="hkl", seed=0, scores={"mmlu": 0.50})
    write_run(tmp_path, "uld/s0", teachers=q, method="uld", seed=0, scores=None, status="failed")
    write_run(tmp_path, "ce/s0", teachers=[], method="ce", seed=0,
              scores={"mmlu": 0.41, "gsm8k": 0.10})  # fmt: skip
    write_run(tmp_path, "ce/s1", teachers=[], method="ce", seed=1, scores=None, status="running")
    return tmp_path


def _row(lb: pd.DataFrame, teachers: str, method: str) -> pd.Series:
    hit = lb[(lb["teachers"] == teachers) & (lb["method"] == method)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_tidy_table_is_exact(sweep: Path) -> None:
    tidy = load.load_runs(sweep)
    assert list(tidy.columns) == common.TIDY_COLUMNS
    got = tidy.set_index(["run", "task"]).sort_index()
    assert len(got) == 3 * 2 + 2 * 2 + 1 + 1 + 2 + 1
    assert got.loc[("gold/s1", "mmlu"), "value"] == pytest.approx(42.0)
    assert got.loc[("gold/s1", "mmlu"), "stderr"] == pytest.approx(1.0)
    assert got.loc[("pkl/s0", "gsm8k"), "value"] == pytest.approx(15.0)
    first = got.loc[("gold/s0", "mmlu")]
    assert (first["experiment"], first["student"], first["teachers"]) == (
        "llama1b_vs_gold",
        "llama-3.2-1b",
        "qwen3-4b",
    )
    assert (first["method"], first["seed"], first["metric"], first["status"]) == (
        "gold",
        0,
        "acc",
        "done",
    )
    assert math.isnan(first["alpha"]) and math.isnan(first["rank"])
    failed = tidy[tidy["run"] == "uld/s0"].iloc[0]
    assert failed["status"] == "failed" and pd.isna(failed["task"]) and math.isnan(failed["value"])
    running = tidy[tidy["run"] == "ce/s1"].iloc[0]
    assert running["status"] == "running" and running["teachers"] == "none"


def test_leaderboard_means_cis_and_delta(sweep: Path) -> None:
    lb = aggregate.leaderboard(load.load_runs(sweep))
    assert aggregate.leaderboard_tasks(lb) == ["mmlu", "gsm8k", "avg"]
    gold = _row(lb, "qwen3-4b", "gold")
    # mmlu 40, 42, 44: mean 42, sd 2; gsm8k 2, 3, 4: mean 3, sd 1; per-run avgs 21, 22.5, 24.
    assert gold["mmlu"] == pytest.approx(42.0)
    assert gold["mmlu_ci95"] == pytest.approx(T2 * 2.0 / math.sqrt(3))
    assert gold["gsm8k"] == pytest.approx(3.0)
    assert gold["gsm8k_ci95"] == pytest.approx(T2 * 1.0 / math.sqrt(3))
    assert gold["avg"] == pytest.approx(22.5)
    assert gold["avg_ci95"] == pytest.approx(T2 * 1.5 / math.sqrt(3))
    assert gold["n_runs"] == 3 and gold["avg_status"] == "ok"
    pkl = _row(lb, "qwen3-4b", "pkl")
    # mmlu 45, 47 and gsm8k 15, 17: sd sqrt(2), so the half-width is T1 * sqrt(2) / sqrt(2) = T1.
    assert pkl["mmlu"] == pytest.approx(46.0) and pkl["mmlu_ci95"] == pytest.approx(T1)
    assert pkl["gsm8k"] == pytest.approx(16.0) and pkl["gsm8k_ci95"] == pytest.approx(T1)
    assert pkl["avg"] == pytest.approx(31.0) and pkl["avg_ci95"] == pytest.approx(T1)
    assert pkl["delta_vs_gold"] == pytest.approx(31.0 - 22.5)
    assert gold["delta_vs_gold"] == pytest.approx(0.0)


def test_missing_failed_partial_cells(sweep: Path) -> None:
    lb = aggregate.leaderboard(load.load_runs(sweep))
    hkl = _row(lb, "qwen3-4b", "hkl")
    assert hkl["mmlu"] == pytest.approx(50.0) and math.isnan(hkl["mmlu_ci95"])  # one seed: no CI
    assert (hkl["mmlu_status"], hkl["gsm8k_status"], hkl["avg_status"]) == (
        "ok",
        "missing",
        "missing",
    )
    assert math.isnan(hkl["delta_vs_gold"])
    uld = _row(lb, "qwen3-4b", "uld")
    assert {uld[f"{t}_status"] for t in ("mmlu", "gsm8k", "avg")} == {"failed"}
    ce = _row(lb, "none", "ce")
    assert ce["mmlu_status"] == "partial" and ce["mmlu_n"] == 1 and ce["n_runs"] == 2
    assert ce["avg"] == pytest.approx(25.5) and math.isnan(ce["delta_vs_gold"])  # no GOLD row

    md = render.format_markdown(lb)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    lines = {" ".join(c.strip() for c in row.strip("|").split("|")[:2]): row for row in rows}
    assert "| 50.00 | missing | missing | n/a |" in lines["qwen3-4b hkl"].replace("**", "")
    assert "| failed | failed | failed | n/a |" in lines["qwen3-4b uld"]
    assert "41.00 (1/2)" in lines["none ce"]
    # Best per column in bold: mmlu 50 (hkl), gsm8k/avg/delta pkl.
    assert "**50.00**" in lines["qwen3-4b hkl"]
    assert f"**16.00 ± {T1:.2f}**" in lines["qwen3-4b pkl"]
    assert "**+8.50**" in lines["qwen3-4b pkl"]
    assert f"42.00 ± {T2 * 2 / math.sqrt(3):.2f}" in lines["qwen3-4b gold"]
    tex = render.format_latex(lb)
    assert r"\textbf{50.00}" in tex and r"$\pm$" in tex and "failed" in tex and "missing" in tex


def test_build_report_writes_everything(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = build.build_report(sweep, out, figures=False)
    for key in ("tidy", "leaderboard_md", "leaderboard_csv", "leaderboard_tex", "comparison"):
        assert written[key].is_file(), key
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporary files
    lb = pd.read_csv(written["leaderboard_csv"])
    assert _row(lb, "qwen3-4b", "uld")["mmlu_status"] == "failed"
    md = written["leaderboard_md"].read_text()
    assert "`uld/s0`: failed" in md and "`ce/s1`: running" in md
    # llama1b_vs_gold -> the published numbers beside ours; gold mmlu 42.00 vs the paper's 42.56.
    assert "42.00 / 42.56 (-0.56)" in md
    assert "| qwen3-4b | uld | failed / 40.34 | failed / 14.56 |" in md
    assert "| +3.82 | qwen3-4b pkl | qwen3-4b gold | 31.000 | 22.500 | +8.500 | +3.82 |" in md
    cmp = pd.read_csv(written["comparison"])
    assert "avg" not in set(cmp["task"])  # our 2-benchmark avg is not the paper's 5-benchmark avg


def test_reference_averages_and_headline_deltas(tmp_path: Path) -> None:
    written = build.build_report(REPO / "results" / "reference", tmp_path, figures=False)
    check = pd.read_csv(written["reference_check"])
    assert len(check) == 12 and check["matches"].all()
    cl = pd.read_csv(written["claims"], dtype={"claim": str}).set_index("claim")
    # By hand from the per-benchmark numbers of xtoken_table1.csv:
    pkl = np.mean([44.67, 15.54, 7.96, 63.46, 62.63])  # 38.852
    gold = np.mean([42.56, 2.56, 4.50, 62.95, 62.59])  # 35.032
    phi_hkl = np.mean([43.93, 19.11, 8.32, 61.87, 62.67])  # 39.180
    phi_gold = np.mean([43.50, 16.50, 7.80, 62.60, 62.92])  # 38.664
    multi = np.mean([46.32, 20.39, 9.02, 63.30, 63.38])  # 40.482
    assert cl.loc["+3.82", "delta"] == pytest.approx(pkl - gold) == pytest.approx(3.82)
    assert cl.loc["+0.5", "delta"] == pytest.approx(phi_hkl - phi_gold) == pytest.approx(0.516)
    assert cl.loc["+1.3", "delta"] == pytest.approx(multi - phi_hkl) == pytest.approx(1.302)
    assert cl["matches"].all()


def test_cli_prints_reference_leaderboard(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xbench.report", "results/reference", "--out", str(tmp_path),
         "--no-figures"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = "| qwen3-4b | pkl | authors | 1 | 44.67 | 15.54 | 7.96 | 63.46 | 62.63 | 38.85 |"
    assert row + " **+3.82** |" in proc.stdout
    assert "| +0.5 |" in proc.stdout and "+0.516" in proc.stdout and "+1.302" in proc.stdout
    assert "12/12 rows" in proc.stdout


def test_errors_are_one_clear_sentence(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(common.ReportError, match="No run directories"):
        load.load_runs(empty)
    bad = write_run(tmp_path / "b", "r", teachers=["t"], method="gold", seed=0, scores=None)
    meta = json.loads((bad / "meta.json").read_text())
    del meta["cell"]["method"]
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(common.ReportError, match=r"meta\.json is missing the field 'cell\.method'"):
        load.load_runs(tmp_path / "b")
    (bad / "meta.json").write_text("{not json")
    with pytest.raises(common.ReportError, match=r"meta\.json is not valid JSON"):
        load.load_runs(tmp_path / "b")
    scaled = write_run(
        tmp_path / "c", "r", teachers=["t"], method="gold", seed=0, scores={"x": 4.2}
    )
    with pytest.raises(
        common.ReportError, match=r"'tasks\.x\.value' = 420\.0 is outside \[0, 100\]"
    ):
        load.load_runs(scaled)
    assert build.main([str(empty)]) == 2


def test_curves_table(tmp_path: Path) -> None:
    metrics = [
        {"step": 0, "train/loss": 3.0, "train/numeral_mass": 0.1, "note": "text"},
        {"step": 10, "train/loss": 2.0, "train/numeral_mass": 0.2},
    ]
    run = write_run(tmp_path, "r", teachers=["a", "b"], method="hkl+kd", seed=1, scores=None,
                    metrics=metrics)  # fmt: skip
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 20, "train/lo')  # a job killed mid-append
    curves = load.load_curves(tmp_path)
    assert list(curves.columns) == common.CURVE_COLUMNS
    assert len(curves) == 4 and set(curves["key"]) == {"train/loss", "train/numeral_mass"}
    assert set(curves["teachers"]) == {"a+b"} and set(curves["method"]) == {"hkl+kd"}
    loss = curves[curves["key"] == "train/loss"].sort_values("step")
    assert loss["value"].tolist() == [3.0, 2.0] and loss["step"].tolist() == [0, 10]


def test_t_ci95() -> None:
    assert aggregate.t_ci95([5.0]) == (5.0, pytest.approx(float("nan"), nan_ok=True), 1)
    mean, half, n = aggregate.t_ci95([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(T2 / math.sqrt(3))


def test_wandb_table_offline(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    build.build_report(sweep, tmp_path / "out", figures=False, use_wandb=True)
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_semantics_preset_is_a_column_and_mixed_presets_are_flagged(tmp_path: Path) -> None:
    q = ["qwen3-4b"]
    for sem, m in (("authors", 0.40), ("xbench", 0.46)):
        for name in ("gold", "pkl"):
            score = {"mmlu": m + (0.02 if name == "pkl" else 0)}
            write_run(tmp_path, f"{sem}/{name}", teachers=q, method=name, seed=0, scores=score,
                      semantics=sem)  # fmt: skip
    tidy = load.load_runs(tmp_path)
    assert set(tidy["semantics"]) == {"authors", "xbench"}
    lb = aggregate.leaderboard(tidy)
    assert len(lb) == 4  # one row per (method, preset): presets are never averaged together
    # Delta vs GOLD compares within one preset: +2 points in both.
    delta = {(r["semantics"], r["method"]): r[DELTA_COL] for _, r in lb.iterrows()}
    assert delta == pytest.approx(
        {("authors", "gold"): 0.0, ("authors", "pkl"): 2.0, ("xbench", "gold"): 0.0,
         ("xbench", "pkl"): 2.0}
    )  # fmt: skip
    md = render.format_markdown(lb)
    assert "| teachers | method | semantics | seeds |" in md
    assert "WARNING: rows use different loss formulas (kd.semantics: authors, xbench)" in md
    assert "| - |" not in md  # "-" only marks rows without a teacher
    one = render.format_markdown(aggregate.leaderboard(tidy[tidy["semantics"] == "authors"]))
    assert "WARNING" not in one and "authors" in one
    # Tables written before the column existed still read back (semantics empty).
    old = tmp_path / "old_tidy.csv"
    tidy.drop(columns=["semantics"]).to_csv(old, index=False)
    assert load.read_tidy(old)["semantics"].isna().all()
