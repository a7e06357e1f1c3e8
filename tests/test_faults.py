"""Faults survived: a corrupt newest checkpoint, a corrupt W, a second writer, evaluation of a
run directory. (Sweep-level faults, Ctrl-C and failed cells, are in test_sweep_faults.py.)"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_utils import REPO, cell_cfg

from xbench.engine import checkpoint
from xbench.engine.session import train
from xbench.rundir import Locked, RunDir, lock

RUN = [
    "cell=ce",
    "train.steps=4",
    "train.ckpt_every=2",
    "train.keep_checkpoints=2",
    "train.log_every=1",
    "data.seq_len=64",
    "world.n_train=200",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step training run with the run-directory contract (config.yaml, meta)."""
    out = tmp_path_factory.mktemp("run") / "cell=ce"
    cfg = cell_cfg(*RUN)
    RunDir(out).start(cfg, {"name": "ce", "seed": 0}, "mini_smoke")
    train(cfg, out)
    return out


def test_truncated_newest_checkpoint_resumes_from_the_previous(
    run_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    work = tmp_path / "cell=ce"
    shutil.copytree(run_dir, work)
    ckpts = checkpoint.list_checkpoints(work / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000002.pt", "step_00000004.pt"]
    newest = ckpts[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn copy
    with caplog.at_level(logging.WARNING, logger="xbench.engine.checkpoint"):
        summary = train(cell_cfg(*RUN, "train.steps=6"), work)
    assert summary["resumed_from"] == 2
    assert str(newest) in caplog.text and "unreadable" in caplog.text
    assert (work / "checkpoints" / "step_00000004.pt.corrupt").exists()
    assert checkpoint.load_latest(work / "checkpoints")["step"] == 6


def test_no_intact_checkpoint_starts_fresh(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "step_00000002.pt").write_bytes(b"PK\x03\x04 not a zip")
    assert checkpoint.load_latest(ckpt) is None
    assert (ckpt / "step_00000002.pt.corrupt").exists()


def test_evaluate_takes_a_run_directory(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from xbench.evaluate import harness as evaluate
    from xbench.mini import world

    monkeypatch.chdir(tmp_path)
    argv = [
        f"model={run_dir}",
        f"out_dir={tmp_path / 'ev'}",
        "limit=2",
        f"metadata.mini_data_dir={world.data_dir()}",
        "gen_kwargs={max_gen_toks: 8}",
    ]
    monkeypatch.setattr(sys, "argv", ["xbench.evaluate", *argv])
    assert evaluate.main(argv) == 0
    res = json.loads((tmp_path / "ev" / "eval" / "results.json").read_text())
    assert res["settings"]["model"]["name"] == "tiny-student@cell=ce:step4"
    assert set(res["tasks"]) == {"mini_arith", "mini_arith_mc", "mini_answer"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"], "stray outputs/ or .hydra/"
    # One checkpoint of the run works too.
    _, _, name = checkpoint.load_student(run_dir / "checkpoints" / "step_00000002.pt")
    assert name.endswith(":step2")


# --------------------------------------------------------------------------- W artifacts


def _w(cache: Path):
    from xbench.engine.models import load_tokenizer
    from xbench.tokenpair.projection import load_or_build

    return load_or_build(
        load_tokenizer("mini:student"), load_tokenizer("mini:digits"), cache_dir=cache
    )


@pytest.mark.parametrize("fault", ["truncated", "bit_flip", "bit_flip_legacy", "meta_garbage"])
def test_corrupt_w_is_detected_and_rebuilt_with_a_warning(
    fault: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = _w(tmp_path)
    (art,) = (tmp_path / "projections").iterdir()
    tensors, meta = art / "projection.safetensors", art / "meta.json"
    data = bytearray(tensors.read_bytes())
    if fault == "truncated":
        tensors.write_bytes(data[: len(data) // 2])
    elif fault.startswith("bit_flip"):
        data[-50] ^= 0x10  # inside the weights tensor
        tensors.write_bytes(bytes(data))
        if fault == "bit_flip_legacy":  # an artifact from before size/sha256 were recorded
            m = json.loads(meta.read_text())
            del m["file"]
            meta.write_text(json.dumps(m))
    else:
        meta.write_text("{ not json")
    with caplog.at_level(logging.WARNING, logger="xbench.tokenpair.projection"):
        again = _w(tmp_path)
    assert "failed verification, rebuilding" in caplog.text and str(art) in caplog.text
    assert again.content_hash == good.content_hash
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xbench.tokenpair.projection"):
        _w(tmp_path)  # the rebuilt artifact is intact
    assert "failed verification" not in caplog.text


# --------------------------------------------------------------------------- locks


def _holder(path: Path) -> subprocess.Popen:
    """Another process holding ``path`` until it is killed."""
    code = (
        "import sys, time; from pathlib import Path; from xbench.rundir import lock\n"
        "with lock(Path(sys.argv[1]), 'test'):\n    print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_of_a_run_dir_is_refused(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    proc = _holder(rd.path / ".lock")
    try:
        with (
            pytest.raises(Locked, match=rf"being written by pid {proc.pid} on .*delete"),
            rd.lock(),
        ):
            pass
    finally:
        proc.kill()
        proc.wait()
    # The holder is gone (killed: its lock file stays behind): the stale lock is replaced.
    assert (rd.path / ".lock").exists()
    with rd.lock():
        assert json.loads((rd.path / ".lock").read_text())["pid"] == os.getpid()
    assert not (rd.path / ".lock").exists()


def test_second_train_of_a_run_dir_is_refused_with_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with lock(run / ".lock", "run directory"):
        proc = subprocess.run(
            [sys.executable, "-m", "xbench.train", "+experiment=mini_smoke", f"run_dir={run}"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is being written by pid {os.getpid()}" in lines[0], lines
    assert sorted(p.name for p in run.iterdir()) == [], "the refused writer wrote into the run"


def test_torn_lock_file_of_a_crashed_writer_is_stale(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    path.write_text("")  # created, never filled: the writer died between open and write
    old = time.time() - 60
    os.utime(path, (old, old))
    with lock(path, "x"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
