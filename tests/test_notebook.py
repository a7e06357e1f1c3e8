"""The alpha/rank notebook runs headless on a tidy table and writes its figures.

By default it runs on a synthetic tiny sweep with a known answer. Point it at real output with
``XBENCH_NOTEBOOK_TIDY=path/to/tidy.csv`` (its curves.csv is picked up from beside it); the
known-answer assertions are then skipped and only execution and figures are checked.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from fixtures.rundirs.synth import make_tiny_sweep
from nbclient import NotebookClient

from xbench.report import aggregate, build, common, load

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "alpha_and_rank.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


def _inject(nb: nbformat.NotebookNode, **params: str) -> None:
    """Papermill's convention: a cell right after the one tagged ``parameters`` overrides it."""
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    src = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(idx + 1, cell)


def test_notebook_executes_on_a_tiny_sweep(tmp_path: Path) -> None:
    real = os.environ.get("XBENCH_NOTEBOOK_TIDY")
    if real:
        tidy_csv = Path(real).resolve()
    else:
        root = make_tiny_sweep(tmp_path / "sweep", seeds=(0, 1))
        tidy_csv = build.build_report(root, tmp_path / "report", figures=False)["tidy"]
    out_dir = tmp_path / "nb_out"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _inject(nb, tidy_csv=str(tidy_csv), out_dir=str(out_dir))
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint('PREFIX=' + sys.prefix)"))
    # kernel "python3" must resolve to this interpreter's environment (the venv), not another one.
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()

    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert f"PREFIX={sys.prefix}" in text
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    tidy = load.read_tidy(tidy_csv)
    expected = []
    if tidy["alpha"].nunique() > 1:
        expected.append("metric_vs_alpha")
    if tidy["rank"].nunique() > 1:
        expected.append("metric_vs_rank")
    if tidy_csv.with_name("curves.csv").is_file():
        expected += ["loss_curves", "numeral_mass"]
    for stem in expected:
        assert (out_dir / f"{stem}.png").is_file() and (out_dir / f"{stem}.svg").is_file(), stem
    if real:
        return
    # The synthetic scores peak at alpha 0.25 (qwen-mini) and 0.75 (phi-mini) and rise with rank.
    assert "Teacher qwen-mini (xtoken, rank 4): best alpha = 0.25" in text
    assert "Teacher phi-mini (xtoken, rank 4): best alpha = 0.75" in text
    assert "The best alpha differs across teachers" in text
    assert "best rank = 8" in text and "rises by 3.00 points from K=1 to K=8" in text
    assert "Numeral mass falls most under" not in text  # synthetic mass only rises


def test_tidy_csv_round_trip(tmp_path: Path) -> None:
    root = make_tiny_sweep(tmp_path / "sweep", seeds=(0,))
    tidy = load.load_runs(root)
    written = build.build_report(root, tmp_path / "r", figures=False)
    again = load.read_tidy(written["tidy"])
    assert aggregate.leaderboard(again).equals(aggregate.leaderboard(tidy))
    curves = load.read_curves(written["curves"])
    assert len(curves) == len(load.load_curves(root))


@pytest.mark.parametrize("name", ["tidy.csv"])
def test_read_tidy_rejects_other_tables(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("a,b\n1,2\n")
    with pytest.raises(common.ReportError, match="not a tidy table"):
        load.read_tidy(tmp_path / name)


def test_notebook_on_the_committed_mini_sweeps(tmp_path: Path) -> None:
    """The real tidy table of mini_alpha_sweep + mini_rank_sweep (results/mini_study/alpha_rank):
    pure P-KL cells carry no alpha (NaN), which a synthetic sweep never exercised."""
    tidy_csv = REPO / "results" / "mini_study" / "alpha_rank" / "tidy.csv"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _inject(nb, tidy_csv=str(tidy_csv), out_dir=str(tmp_path), task="mini_arith")
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "Teacher mini-A (xtoken, rank 4): best alpha = 0 with mini_arith 52.43" in text
    assert "Teacher mini-A: mini_arith rises by 2.78 points from K=1 to K=8." in text
    assert (tmp_path / "metric_vs_alpha.png").is_file()
