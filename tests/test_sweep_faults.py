"""A real local sweep under faults: failed cells make it exit 1 with one FAILED line each;
Ctrl-C (SIGINT to the sweep alone) marks the running cell `interrupted`, leaves no cell process
behind, refuses a concurrent second sweep, and a rerun resumes the cell from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_utils import REPO

from xbench.rundir import lock

SMALL = ["+experiment=mini_smoke", "+debug=ci"]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "XBENCH_OUT": str(tmp / "out")}


def _sweep(tmp: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xbench.sweep", *SMALL, *args],
        cwd=tmp,
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_failed_cells_exit_1_with_one_failed_line_each(tmp_path: Path) -> None:
    # A learning rate of 1e30 is valid config but blows the weights up: the loss turns
    # non-finite at the second step, a real failure inside the cell job. The other cell's run
    # directory is locked by this test process, as by a concurrent writer: that job is refused.
    sweep = tmp_path / "out" / "mini_smoke"
    # Run directories are named by the job's overrides, as Hydra renders them.
    locked = sweep / "+debug=ci,cell=kd-C,optim.lr=1e+30"
    with lock(locked / ".lock", "test"):
        proc = _sweep(tmp_path, "optim.lr=1e30")
    assert proc.returncode == 1, proc.stderr[-3000:]
    failed = sorted(line for line in proc.stderr.splitlines() if line.startswith("FAILED "))
    assert len(failed) == 2, proc.stderr[-3000:]
    assert failed[0].startswith("FAILED cell=ce status=failed run_dir=")
    assert "NonFiniteLoss" in failed[0]
    assert failed[1].startswith(f"FAILED cell=kd-C status=locked run_dir={locked}: ")
    assert f"is being written by pid {os.getpid()}" in failed[1]
    assert not (locked / "meta.json").exists(), "the refused job wrote into the locked run dir"
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [n.split(",")[1] for n in summary["statuses"]["failed"]] == ["cell=ce"]


def _cell_processes(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (the sweep's submitit folder)."""
    found = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmd.read_bytes().decode(errors="replace"):
                found.append(int(cmd.parent.name))
        except OSError:
            continue
    return found


def test_ctrl_c_marks_interrupted_and_a_rerun_resumes(tmp_path: Path) -> None:
    slow = ["cell=ce", "train.steps=20", "train.ckpt_every=2", "train.debug_sleep_s=1.0"]
    sweep = tmp_path / "out" / "mini_smoke"
    cmd = [sys.executable, "-m", "xbench.sweep", *SMALL, *slow]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), **pipes)
    try:
        deadline = time.time() + 300
        while not (sweep / ".sweep.lock").exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the sweep never started"
            time.sleep(0.2)
        # A second sweep of the same experiment is refused while the first one runs.
        second = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), timeout=300, **pipes)
        assert second.returncode == 2, second.stderr[-3000:]
        (line,) = second.stderr.strip().splitlines()
        assert f"is being written by pid {proc.pid}" in line
        while not (ckpts := list(sweep.glob("*/checkpoints/step_00000002.pt"))):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the cell never reached its first checkpoint"
            time.sleep(0.2)
        run = ckpts[0].parent.parent
        assert "cell=ce" in run.name
        assert json.loads((run / "meta.json").read_text())["status"] == "running"
        os.kill(proc.pid, signal.SIGINT)  # the sweep alone, not its process group
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "INTERRUPTED cell=ce" in err
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "interrupted", meta
    stopped_at = int(sorted((run / "checkpoints").glob("step_*.pt"))[-1].stem.split("_")[1])
    assert 2 <= stopped_at < 20
    assert not _cell_processes(str(sweep / ".submitit")), "a cell job outlived the sweep"
    assert not (run / ".lock").exists() and not (sweep / ".sweep.lock").exists()

    again = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), timeout=600, **pipes)
    assert again.returncode == 0, again.stderr[-3000:]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "done" and meta["attempts"] == 2
    assert meta["train"]["resumed_from"] == stopped_at, meta["train"]


@pytest.mark.slow
def test_cell_jobs_stop_when_the_sweep_is_killed(tmp_path: Path) -> None:
    slow = ["cell=ce", "train.steps=30", "train.ckpt_every=2", "train.debug_sleep_s=1.0"]
    sweep = tmp_path / "out" / "mini_smoke"
    cmd = [sys.executable, "-m", "xbench.sweep", *SMALL, *slow]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (ckpts := list(sweep.glob("*/checkpoints/step_00000002.pt"))):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # no handler runs: only the cell's watchdog can notice
    proc.wait()
    marker = str(sweep / ".submitit")
    while _cell_processes(marker) and time.time() < deadline:
        time.sleep(0.5)
    assert not _cell_processes(marker), "a cell job outlived its SIGKILLed sweep"
    meta = json.loads((ckpts[0].parent.parent / "meta.json").read_text())
    assert meta["status"] == "interrupted", meta
