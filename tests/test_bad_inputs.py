"""Every bad input is refused before anything runs: non-zero exit, one line naming the field, no
traceback, nothing written (cwd, results/ and outputs/ untouched, `git status` unchanged).

Most cases call the entry points' ``main(argv)`` in-process (the function behind
``python -m xbench.<verb>``); a handful run as real subprocesses to prove the exit code and the
single stderr line of the command a user types.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_utils import REPO

from xbench import pair
from xbench.engine import session as train
from xbench.evaluate import harness as evaluate
from xbench.sweep import launch as sweep

MAIN = {"sweep": sweep.main, "train": train.main, "evaluate": evaluate.main, "pair": pair.main}
EXP = "+experiment=mini_smoke"

# (entry point, argv, the field the message must name)
CASES = [
    ("sweep", [EXP, "kd.alpha=1.5"], "kd.alpha"),
    ("sweep", [EXP, "kd.rank=-1"], "kd.rank"),
    ("sweep", [EXP, "kd.topk=0"], "kd.topk"),
    ("sweep", [EXP, "kd.temperature=0"], "kd.temperature"),
    ("sweep", [EXP, "kd.kl=backward"], "kd.kl"),
    ("sweep", [EXP, "kd.beta=2"], "kd.beta"),
    ("sweep", [EXP, "kd.hkl_threshold=1.5"], "kd.hkl_threshold"),
    ("sweep", [EXP, "kd.chunk_method=max"], "kd.chunk_method"),
    ("sweep", [EXP, "kd.multi_teacher=vote"], "kd.multi_teacher"),
    ("sweep", [EXP, "kd.learn_w=maybe"], "kd.learn_w"),
    ("sweep", [EXP, "mix.mode=auto"], "mix.mode"),
    ("sweep", [EXP, "mix.ce_weight=-1"], "mix.ce_weight"),
    ("sweep", [EXP, "train.precision=fp8"], "train.precision"),
    ("sweep", [EXP, "train.parallel=zero3"], "train.parallel"),
    ("sweep", [EXP, "train.steps=0"], "train.steps"),
    ("sweep", [EXP, "train.global_batch_size=6"], "train.global_batch_size"),
    ("sweep", [EXP, "resources.tasks_per_node=3"], "train.global_batch_size"),
    ("sweep", [EXP, "train.device=tpu"], "train.device"),
    ("sweep", [EXP, "train.aligner=fast"], "train.aligner"),
    ("sweep", [EXP, "train.teacher_cache=true", "train.teacher_parallel=fsdp"], "teacher_cache"),
    ("sweep", [EXP, "optim.lr=-0.1"], "optim.lr"),
    ("sweep", [EXP, "optim.betas=[0.9]"], "optim.betas"),
    ("sweep", [EXP, "optim.warmup_steps=ten"], "optim.warmup_steps"),
    ("sweep", [EXP, "data.seq_len=1"], "data.seq_len"),
    ("sweep", [EXP, "data.source=s3"], "data.source"),
    ("sweep", [EXP, "resources.nodes=0"], "resources.nodes"),
    ("sweep", [EXP, "wandb.mode=cloud"], "wandb.mode"),
    ("sweep", [EXP, "eval.limit=0"], "eval.limit"),
    ("sweep", [EXP, "seed=-1"], "seed"),
    ("sweep", [EXP, "world.n_test=10"], "world.n_test"),
    ("sweep", [EXP, "cell=nosuch"], "cell='nosuch'"),
    ("sweep", [EXP, "cell=ce,nosuch"], "cell='nosuch'"),
    ("sweep", [EXP, "plan=yes"], "plan"),
    ("sweep", [EXP, "plan=true", "kd.alpha=2"], "kd.alpha"),
    ("sweep", ["+experiment=nosuch"], "experiment/nosuch"),
    ("sweep", [EXP, "student=nosuch"], "student/nosuch"),
    ("sweep", [EXP, "kd.nosuch=1"], "kd.nosuch"),
    ("sweep", [EXP, "cell=x", "+cells.x.teachers=[{teacher: zz, method: kd}]"], "teacher"),
    ("sweep", [EXP, "cell=x", "+cells.x.teachers=[{teacher: tiny_C, method: kl}]"], "method"),
    ("sweep", [EXP, "zoo.tiny_A.model=mini:nosuch", "cell=pkl-A"], "zoo.tiny_A.model"),
    ("train", [EXP, "cell=nosuch"], "cell='nosuch'"),
    ("train", [EXP, "train.micro_batch_size=0"], "train.micro_batch_size"),
    ("train", [EXP, "kd.alpha=-0.1"], "kd.alpha"),
    ("evaluate", [], "model"),
    ("evaluate", ["model=nosuch-org/nosuch-model"], "model"),
    ("evaluate", ["--config-name", "nosuch", "model=smollm2"], "--config-name"),
    ("evaluate", ["model=smollm2", "limit=-1"], "limit"),
    ("evaluate", ["model=smollm2", "batch_size=0"], "batch_size"),
    ("evaluate", ["model=smollm2", "apply_chat_template=perhaps"], "apply_chat_template"),
    ("evaluate", ["model=smollm2", "task_include=nosuch"], "task_include"),
    ("pair", ["teacher=nosuch"], "teacher"),
    ("pair", ["rank=0"], "rank"),
    ("pair", ["align_method=fast"], "align_method"),
    ("pair", ["sample_size=-1"], "sample_size"),
    ("pair", ["reverse_pass=maybe"], "reverse_pass"),
    ("pair", ["threshold=0"], "threshold"),
]
if torch.cuda.is_available():  # the case below is a bad input only on a machine without a GPU
    CASES = [c for c in CASES if "train.device=cuda" not in c[1]]
else:
    CASES.append(("sweep", [EXP, "train.device=cuda"], "train.device"))


def _tree() -> tuple[str, set[str]]:
    """`git status` of the checkout and the folders under results/ and outputs/."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    folders = {str(p) for base in ("results", "outputs") for p in (REPO / base).rglob("*")}
    return status, folders


@pytest.fixture(scope="module")
def tree_before() -> tuple[str, set[str]]:
    return _tree()


def _check_line(err: str, field: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert field in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("entry", "argv", "field"), CASES, ids=[f"{c[0]}:{' '.join(c[1][-2:])}" for c in CASES]
)
def test_bad_input_is_one_line_and_leaves_nothing(
    entry: str,
    argv: list[str],
    field: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tree_before: tuple[str, set[str]],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XBENCH_OUT", str(tmp_path / "out"))
    monkeypatch.setattr(sys, "argv", [f"xbench.{entry}"])
    rc = MAIN[entry](list(argv))
    out, err = capsys.readouterr()
    assert rc != 0
    assert out == ""
    line = _check_line(err, field)
    assert line.startswith(f"xbench.{entry}: error: ")
    assert not list(tmp_path.iterdir()), "a refused command wrote files"
    assert _tree() == tree_before


SUBPROCESS_CASES = [
    ("sweep", [EXP, "kd.alpha=1.5"], "kd.alpha"),
    ("sweep", [EXP, "plan=yes"], "plan"),
    ("train", [EXP, "cell=nosuch"], "cell"),
    ("evaluate", ["model=nosuch-org/nosuch-model"], "model"),
    ("pair", ["student=llama3", "teacher=nosuch"], "teacher"),
]


@pytest.mark.parametrize(("entry", "argv", "field"), SUBPROCESS_CASES, ids=lambda v: str(v))
def test_bad_input_as_a_command(entry: str, argv: list[str], field: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "XBENCH_OUT": str(tmp_path / "out")}
    proc = subprocess.run(
        [sys.executable, "-m", f"xbench.{entry}", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    _check_line(proc.stderr, field)
    assert not list(tmp_path.iterdir())


def test_debug_flag_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XBENCH_DEBUG", "1")
    assert sweep.main([EXP, "kd.alpha=1.5"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("xbench.sweep: error")


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        ("sweep", ["mini_smoke", "kd-C", "llama1b_vs_gold", "pkl", "xtoken", "smollm2", "mini"]),
        ("train", ["mini_vs_gold", "gold-A", "hkl", "llama3"]),
        ("evaluate", ["offline_real", "gsm8k_offline", "mini_arith", "smollm2", "run directory"]),
        ("pair", ["llama3", "qwen3", "smollm2", "align_method"]),
    ],
)
def test_help_starts_with_usage_and_lists_names(
    entry: str, names: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert MAIN[entry](["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m xbench.{entry}")
    for name in names:
        assert name in out, f"--help of xbench.{entry} does not list {name}"


def test_every_experiment_passes_validation() -> None:
    """The schema is not stricter than the configs we ship: every job of every experiment."""
    for exp in sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")):
        jobs = sweep.preflight([f"+experiment={exp}", "plan=true"])
        assert jobs, exp
