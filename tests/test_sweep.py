"""The walking skeleton: sweep -> train -> lm-eval -> run directories -> leaderboard (local)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml
from engine_utils import REPO, run_module

PAPER_TABLE = REPO / "results" / "reference" / "xtoken_table1.csv"


def test_plan_lists_every_row_of_the_paper_table(paper_plan: tuple[str, Path]) -> None:
    stdout, cwd = paper_plan
    cells = [line for line in stdout.splitlines() if line.startswith("CELL ")]
    got = set()
    for line in cells:
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f and "{" not in f)
        got.add((fields["teachers"], fields["method"]))
        assert "cmd: python -m xbench.sweep" in line and '"gpus_per_node": 8' in line
        # Issue 20: every cell with a teacher computes the authors' formulas; none has no KD term.
        assert fields["semantics"] == ("-" if fields["teachers"] == "none" else "authors"), line
    with open(PAPER_TABLE) as fh:
        rows = list(csv.DictReader(fh))
    want = {(r["teacher"], r["method"]) for r in rows}
    assert got == want, f"missing {want - got}, extra {got - want}"
    assert not list(cwd.rglob("meta.json")), "plan mode must not launch anything"


def _runs(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("meta.json")}


def test_mini_smoke_sweep_writes_run_dirs_and_leaderboard_then_skips(tmp_path: Path) -> None:
    env = {"XBENCH_OUT": str(tmp_path / "out")}
    run_module(["-m", "xbench.sweep", "+experiment=mini_smoke"], cwd=tmp_path, env=env)
    sweep = tmp_path / "out" / "mini_smoke"
    runs = _runs(sweep)
    assert set(runs) == {"cell=ce", "cell=kd-C"}
    for name, meta in runs.items():
        run = sweep / name
        assert meta["status"] == "done", meta.get("error")
        assert meta["cell"]["method"] in ("ce", "kd") and meta["attempts"] == 1
        assert meta["git"]["sha"] and meta["versions"]["lm-eval"] == "0.4.13"
        assert yaml.safe_load((run / "config.yaml").read_text())["cell"] in ("ce", "kd-C")
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1, 2, 3, 4]
        results = json.loads((run / "eval" / "results.json").read_text())
        assert results["lm_eval_version"] == "0.4.13"
        task = results["tasks"]["mini_arith"]
        assert task["metric"] == "exact_match" and task["filter"] == "strict-match"
        assert 0.0 <= task["value"] <= 100.0
    board = (sweep / "report" / "leaderboard.md").read_text()
    assert "| none | ce |" in board and "| tiny-C | kd |" in board
    # Issue 20: the leaderboard of a mini sweep names the loss formulas' preset of every row.
    assert "| teachers | method | semantics |" in board and "| tiny-C | kd | xbench |" in board
    assert (sweep / "report" / "leaderboard.csv").exists()
    launched = len(list((sweep / ".submitit").iterdir()))
    # Rerun: both cells are done for the same config hash, so nothing is launched again.
    proc = run_module(["-m", "xbench.sweep", "+experiment=mini_smoke"], cwd=tmp_path, env=env)
    assert "2 of 2 cells are done already" in proc.stdout + proc.stderr
    assert len(list((sweep / ".submitit").iterdir())) == launched
    again = _runs(sweep)
    assert {k: v["attempts"] for k, v in again.items()} == {"cell=ce": 1, "cell=kd-C": 1}
    assert (sweep / "report" / "leaderboard.md").read_text() == board
