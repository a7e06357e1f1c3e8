"""Training-engine properties on tiny CPU models: invariances, resume, multi-teacher, cache."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_utils import cell_cfg, max_diff, run_module, state

from xbench.engine.session import NonFiniteLoss, train
from xbench.io import read_jsonl

FAST = ["train.steps=2", "train.log_every=1", "data.seq_len=64", "world.n_train=200"]


def _train(tmp: Path, name: str, *overrides: str) -> Path:
    run_dir = tmp / name
    train(cell_cfg(*FAST, *overrides), run_dir)
    return run_dir


@pytest.mark.parametrize("cell", ["ce", "pkl-A", "gold-A"])
def test_grad_accumulation_1x8_equals_8x1(tmp_path: Path, cell: str) -> None:
    # Fixed CE/KD weights: the dynamic ratio sg(CE/KD) is per micro-batch by definition.
    common = [f"cell={cell}", "mix.mode=fixed", "train.global_batch_size=8"]
    a = _train(tmp_path, "a", *common, "train.micro_batch_size=8")
    b = _train(tmp_path, "b", *common, "train.micro_batch_size=1")
    assert max_diff(state(a), state(b)) < 1e-5
    la = read_jsonl(a / "metrics.jsonl")[0]["train/loss"]
    lb = read_jsonl(b / "metrics.jsonl")[0]["train/loss"]
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_TWO_RANK_COMMON = [
    "+experiment=mini_smoke",
    "cell=pkl-A",
    "mix.mode=fixed",
    "train.device=cpu",
    "train.global_batch_size=8",
    *FAST,
]


@pytest.fixture(scope="module")
def one_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-rank reference, trained once for every parallel mode compared against it."""
    root = tmp_path_factory.mktemp("one_rank")
    run_module(
        [
            "-m",
            "xbench.train",
            *_TWO_RANK_COMMON,
            "train.micro_batch_size=8",
            f"run_dir={root / 'one'}",
        ],
        cwd=root,
    )
    return root / "one"


@pytest.mark.parametrize(
    "parallel", ["ddp", "fsdp", "fsdp-teachers"], ids=["ddp", "fsdp", "fsdp+sharded-teacher"]
)
def test_two_gloo_ranks_equal_one_rank_with_double_batch(
    tmp_path: Path, parallel: str, one_rank_run: Path
) -> None:
    # Under FSDP the checkpoint must hold the full, gathered student (compared key by key).
    common = _TWO_RANK_COMMON
    run_module(
        [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            "-m",
            "xbench.train",
            *common,
            "train.micro_batch_size=4",
            f"train.parallel={parallel.split('-')[0]}",
            f"train.teacher_parallel={'fsdp' if parallel.endswith('teachers') else 'replicate'}",
            f"run_dir={tmp_path / 'two'}",
        ],
        cwd=tmp_path,
    )
    assert max_diff(state(one_rank_run), state(tmp_path / "two")) < 1e-5
    l1 = read_jsonl(one_rank_run / "metrics.jsonl")
    l2 = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in l1] == [r["step"] for r in l2]
    for r1, r2 in zip(l1, l2, strict=True):
        assert r1["train/loss"] == pytest.approx(r2["train/loss"], rel=1e-5)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    args = [
        "-m",
        "xbench.train",
        "+experiment=mini_smoke",
        "cell=kd-C+pkl-A",
        "train.steps=6",
        "train.ckpt_every=1",
        "train.log_every=1",
        "data.seq_len=64",
        "world.n_train=200",
    ]
    run_module([*args, f"run_dir={tmp_path / 'full'}"], cwd=tmp_path)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, *args, f"run_dir={killed}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_00000003.pt").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step_00000006.pt").exists()
    run_module([*args, f"run_dir={killed}"], cwd=tmp_path)  # resumes from the latest checkpoint
    assert max_diff(state(tmp_path / "full"), state(killed)) == 0.0
    full = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    resumed = read_jsonl(killed / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in full] == list(range(1, 7))
    assert [r["train/loss"] for r in resumed] == [r["train/loss"] for r in full]
    # Both teachers' components are logged per teacher.
    keys = set(full[-1])
    assert {"train/loss_kd/t0", "train/loss_kd/t1", "train/kd/t0/kd", "train/kd/t1/kl"} <= keys
    assert {"train/numeral_mass", "train/tokens_per_s", "train/peak_mem_mb"} <= keys


def test_teacher_cache_one_forward_per_batch_across_methods(tmp_path: Path) -> None:
    cache = tmp_path / "tcache"
    opts = [
        "train.teacher_cache=true",
        f"train.teacher_cache_dir={cache}",
        "train.global_batch_size=8",
        "train.micro_batch_size=4",
    ]
    for cell in ("uld-A", "gold-A", "pkl-A"):
        _train(tmp_path, cell, f"cell={cell}", *opts)
    logs = list(cache.rglob("forwards.log"))
    assert len(logs) == 1
    # 2 steps x 2 micro-batches = 4 distinct batches: one forward each, for all three methods.
    assert len(logs[0].read_text().splitlines()) == 4
    # Cached logits give the same update as online ones.
    online = _train(tmp_path, "online", "cell=pkl-A", *opts[2:])
    assert max_diff(state(online), state(tmp_path / "pkl-A")) < 1e-5


def test_nonfinite_loss_stops_with_a_dump(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step"):
        _train(
            tmp_path,
            "nan",
            "cell=ce",
            "optim.lr=1e30",
            "optim.grad_clip=1e30",
            "train.steps=4",
            "optim.warmup_steps=1",
        )
    assert list((tmp_path / "nan" / "checkpoints").glob("nonfinite_*.pt"))


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data: the mini corpus is empty"):
        _train(tmp_path, "empty", "cell=ce", "data.max_docs=0")
    with pytest.raises(ValueError, match=r"global_batch_size=6 is not divisible"):
        _train(tmp_path, "div", "cell=ce", "train.global_batch_size=6", "train.micro_batch_size=4")
    from xbench.engine.models import build_from_config, check_vocab, load_tokenizer

    tok = load_tokenizer("mini:grouped")
    small = build_from_config(
        {
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "intermediate_size": 8,
        },
        vocab_size=len(tok) - 5,
        seed=0,
    )
    with pytest.raises(
        ValueError, match=r"teachers\[0\]: the model embedding has \d+ rows but the tokenizer"
    ):
        check_vocab(small, tok, "teachers[0]")
    assert not (tmp_path / "empty" / "checkpoints").exists()


def test_xtoken_blend_trains_and_logs_both_terms(tmp_path: Path) -> None:
    run = _train(tmp_path, "xt", "cell=xtoken-A", "kd.alpha=0.25")
    last = read_jsonl(run / "metrics.jsonl")[-1]
    assert any(k.startswith("train/kd/t0/pkl/") for k in last)
    assert any(k.startswith("train/kd/t0/hkl/") for k in last)


def test_atomic_writes_get_normal_permissions(tmp_path: Path) -> None:
    from xbench.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


def test_slow_tokenizer_with_offset_aligner_is_named() -> None:
    from xbench.engine.data import PairDataset, Side
    from xbench.engine.models import load_tokenizer

    tok = load_tokenizer("mini:student")

    class Slow:  # a tokenizer without character offsets (is_fast False), as Python ones are
        is_fast = False

    with pytest.raises(ValueError, match=r"teachers\[0\]\.tokenizer gives no character offsets"):
        PairDataset(["1 + 1 = 2"], tok, [Side(Slow(), False, "offset")], 64)
    PairDataset(["1 + 1 = 2"], tok, [Side(Slow(), False, "dp")], 64)  # DP needs no offsets


@pytest.mark.parametrize("multi", ["softmax_ce", "softmax_entropy", "best"])
def test_adaptive_multi_teacher_weights_are_logged(tmp_path: Path, multi: str) -> None:
    run = _train(tmp_path, multi, "cell=kd-C+pkl-A", f"kd.multi_teacher={multi}")
    last = read_jsonl(run / "metrics.jsonl")[-1]
    w0, w1 = last["train/teacher_weight/t0"], last["train/teacher_weight/t1"]
    # Logged weights are means over the step's micro-batches (2 here, 8 = 2 x 4), not sums.
    assert w0 + w1 == pytest.approx(1.0, abs=1e-5)
    if multi == "best":  # one teacher takes all the weight in each micro-batch
        assert {w0, w1} <= {0.0, 0.5, 1.0}


def test_logit_average_needs_same_vocabulary_teachers(tmp_path: Path) -> None:
    two_c = (
        "+cells.two_c={teachers: [{teacher: tiny_C, method: kd}, {teacher: tiny_C, method: kd}]}"
    )
    run = _train(tmp_path, "avg", "cell=two_c", two_c, "kd.multi_teacher=logit_avg")
    assert "train/loss_kd/avg" in read_jsonl(run / "metrics.jsonl")[-1]
    with pytest.raises(ValueError, match=r"logit_avg averages logits, so every teacher must share"):
        _train(tmp_path, "bad", "cell=kd-C+pkl-A", "kd.multi_teacher=logit_avg")
