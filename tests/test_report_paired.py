"""Headline exact match, per-length breakdown columns and the paper's orderings as paired deltas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures.rundirs.synth import write_run

from xbench.report import aggregate, build, load

# Per-seed exact match (fractions) of three cells; the probe is deliberately far larger, so an
# avg that included it would show.
EM = {"ce": [0.30, 0.32, 0.34], "gold": [0.20, 0.25, 0.20], "pkl": [0.31, 0.31, 0.37]}
TEACHERS = {"ce": [], "gold": ["mini-A"], "pkl": ["mini-A"]}


def _write_mini_run(root: Path, method: str, seed: int) -> None:
    em = EM[method][seed]
    name = f"{method}/s{seed}"
    write_run(root, name, teachers=TEACHERS[method], method=method, seed=seed, scores=None,
              experiment="mini_vs_gold", student="mini-student")  # fmt: skip
    by_len = {f"exact_match@len{k}": em * k / 2.5 for k in (1, 2, 3, 4)}  # mean over k = em
    raw_arith = {"exact_match,strict-match": em, "exact_match_stderr,strict-match": 0.01}
    raw_arith |= {f"{k},strict-match": v for k, v in by_len.items()}
    raw_arith |= {"exact_match@len1,flexible-extract": 0.99}  # other filter: not ours
    tasks = {
        "mini_arith": {"metric": "exact_match", "filter": "strict-match", "value": 100 * em},
        "mini_answer": {"metric": "answer_prob", "filter": "none", "value": 90.0},
    }
    raw = {"results": {"mini_arith": raw_arith, "mini_answer": {"answer_prob,none": 0.9}}}
    results = {"lm_eval_version": "0.4", "settings": {}, "tasks": tasks, "raw": raw}
    (root / name / "eval" / "results.json").write_text(json.dumps(results))
    # Numeral mass: 0.13 at step 1, then a per-method, per-seed value at the last step.
    last = {"ce": 0.12, "gold": 0.02, "pkl": 0.11}[method] + 0.01 * seed
    lines = [{"step": 1, "train/numeral_mass": 0.13}, {"step": 5, "train/numeral_mass": last}]
    (root / name / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    for method in EM:
        for seed in range(3):
            _write_mini_run(tmp_path, method, seed)
    return tmp_path


def test_breakdown_rows_and_headline_avg(sweep: Path) -> None:
    tidy = load.load_runs(sweep)
    ce0 = tidy[tidy["run"] == "ce/s0"].set_index("task")["value"]
    assert ce0["mini_arith@len4"] == pytest.approx(100 * 0.30 * 4 / 2.5)
    assert "mini_arith@len1" in ce0 and ce0["mini_arith@len1"] != 99.0  # strict-match only
    lb = aggregate.leaderboard(tidy)
    cols = aggregate.leaderboard_tasks(lb)
    # Headline first, its length classes beside it, the probe after, the avg last.
    assert cols == ["mini_arith", *(f"mini_arith@len{k}" for k in (1, 2, 3, 4)), "mini_answer",
                    "avg"]  # fmt: skip
    ce = lb[lb["method"] == "ce"].iloc[0]
    # avg = exact match alone: neither the probe (90) nor the breakdown is averaged in.
    assert ce["avg"] == pytest.approx(100 * np.mean(EM["ce"]))
    gold = lb[lb["method"] == "gold"].iloc[0]
    assert lb[lb["method"] == "pkl"].iloc[0]["delta_vs_gold"] == pytest.approx(
        100 * (np.mean(EM["pkl"]) - np.mean(EM["gold"]))
    )
    assert gold["mini_answer"] == pytest.approx(90.0)


def test_paired_orderings(sweep: Path) -> None:
    paired = aggregate.paired_orderings(load.load_runs(sweep))
    avg = paired[paired["task"] == "avg"].set_index("ordering")
    # Only the orderings whose two sides exist: GOLD-A < CE and CE < P-KL-A.
    assert sorted(avg.index) == ["CE < P-KL-A", "GOLD-A < CE"]
    d = 100 * (np.array(EM["ce"]) - np.array(EM["gold"]))  # seed by seed
    mean, half, _ = aggregate.t_ci95(d)
    row = avg.loc["GOLD-A < CE"]
    assert (row["n"], row["delta"], row["ci95"]) == (3, pytest.approx(mean), pytest.approx(half))
    assert row["lower"] == "mini-a gold" and row["upper"] == "none ce"
    assert row["verdict"] == "holds"  # deltas 10, 7, 14: the CI lies above 0
    # P-KL - CE per seed: +1, -1, +3 -> the CI spans 0. An unpaired reading would say the same
    # here; the pairing is what the CI is computed over.
    assert avg.loc["CE < P-KL-A", "verdict"] == "not separated"
    per_len = paired[(paired["ordering"] == "GOLD-A < CE") & (paired["task"] == "mini_arith@len4")]
    assert per_len["delta"].iloc[0] == pytest.approx(mean * 4 / 2.5)


def test_report_writes_the_orderings(sweep: Path, tmp_path: Path) -> None:
    written = build.build_report(sweep, tmp_path / "out", figures=False)
    md = written["leaderboard_md"].read_text()
    assert "The paper's orderings, paired over seeds" in md
    assert "| GOLD-A < CE | avg | mini-a gold | none ce | 3 |" in md
    assert written["paired"].is_file()


def test_numeral_mass_at_the_last_step(sweep: Path, tmp_path: Path) -> None:
    mass = aggregate.last_step_values(load.load_curves(sweep), "train/numeral_mass")
    gold = mass[mass["method"] == "gold"].iloc[0]
    assert (gold["n"], gold["mean"]) == (3, pytest.approx(0.03))  # 0.02, 0.03, 0.04
    assert gold["ci95"] == pytest.approx(aggregate.t_ci95([0.02, 0.03, 0.04])[1])
    assert list(mass["method"]) == ["ce", "gold", "pkl"]  # Table 1 order
    md = build.build_report(sweep, tmp_path / "o", figures=False)["leaderboard_md"].read_text()
    assert "| mini-A | gold | 3 | 0.030 ± 0.025 |" in md
