"""The miniature study (issue 9) in its CI profile: the same experiment, shrunk by +debug=ci."""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine_utils import run_module


def test_mini_vs_gold_small_profile_end_to_end(tmp_path: Path) -> None:
    # The cells the asserted rows and orderings need (kd-C and pkl-A train in test_engine and
    # test_objective_real; the full study is `make demo`).
    cells = "base,ce,gold-A,hkl-B,hkl-B+kd-C"
    run_module(
        [
            "-m",
            "xbench.sweep",
            "+experiment=mini_vs_gold",
            "+debug=ci",
            f"cell={cells}",
            "seed=0,1",
        ],
        cwd=tmp_path,
        env={"XBENCH_OUT": str(tmp_path / "out")},
    )
    sweep = tmp_path / "out" / "mini_vs_gold"
    metas = [json.loads(p.read_text()) for p in sweep.rglob("meta.json")]
    assert len(metas) == 10 and {m["status"] for m in metas} == {"done"}
    methods = {(m["cell"]["teachers"], m["cell"]["method"]) for m in metas}
    assert ("mini-A", "gold") in methods and ("mini-B+mini-C", "hkl+kd") in methods
    board = (sweep / "report" / "leaderboard.md").read_text()
    for row in ("| none | base |", "| mini-A | gold |", "| mini-B | hkl |"):
        assert row in board
    assert "mini_answer" in board and "Δ GOLD" in board
    # The study states its formula set: every teacher row carries kd.semantics=xbench.
    assert re.search(r"\| mini-A \| gold \|[^\n]*\| xbench \|", board)
    assert re.search(r"\| none \| base \|[^\n]*\| - \|", board)
    # Exact match per answer length beside the headline, and the paper's orderings paired.
    assert all(f"mini_arith@len{k}" in board for k in (1, 2, 3, 4))
    assert "| GOLD-A < CE | avg |" in board and "| H-KL-B < H-KL-B + KD-C | avg |" in board
    figures = sweep / "report" / "figures"
    assert (figures / "numeral_mass.png").stat().st_size > 0
    assert (figures / "benchmarks.png").stat().st_size > 0
    # The numeral watch is logged for every trained cell, per step.
    run = next(sweep.glob("*cell=gold-A,seed=0*"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("train/numeral_mass" in r and "train/kd/t0/kl_common" in r for r in rows)
