"""The learned W on several ranks: bit-identical on every rank at every step, and equal to the
one-rank run of the same global batch (2 gloo ranks, DDP and FSDP, 20 steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_utils import max_diff, run_module, torchrun

from xbench.engine.checkpoint import load_latest
from xbench.io import read_jsonl
from xbench.losses.pkl import LearnableProjection

STEPS = 20
# P-KL with a learned W and the paper's dynamic mixing sg(CE/KD). Both the dynamic ratio and
# P-KL's top-k teacher columns are computed per micro-batch, so the runs compared here see
# micro-batches identical in content: global batch 8 as 2 micro-batches of 4 on one rank, or one
# micro-batch of 4 on each of 2 ranks (StepBatches gives rank r the slice micro-step r has on one
# rank). Under those semantics the two runs compute the same update.
COMMON = [
    "+experiment=mini_smoke",
    "cell=pkl-A",
    "mix.mode=dynamic",
    "train.device=cpu",
    "train.global_batch_size=8",
    "train.micro_batch_size=4",
    f"train.steps={STEPS}",
    f"train.ckpt_every={STEPS // 2}",
    "train.keep_checkpoints=2",
    "train.log_every=1",
    "data.seq_len=48",
    "world.n_train=200",
    # The lr the tolerances below were measured at (the miniature study's is 3e-3, issue 18).
    "optim.lr=1e-3",
]


def _w(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    """W's values (rows on the simplex) per learned teacher, from a checkpoint's objective."""
    if step is None:
        ckpt = load_latest(run / "checkpoints")
    else:
        ckpt = torch.load(run / "checkpoints" / f"step_{step:08d}.pt", weights_only=False)
    assert ckpt is not None
    obj = ckpt["objective"]
    out = {}
    for key in (k.removesuffix(".raw") for k in obj if k.endswith(".raw")):
        proj = LearnableProjection(obj[f"{key}.indices"], obj[f"{key}.mask"].float())
        proj.load_state_dict({n: obj[f"{key}.{n}"] for n in ("indices", "mask", "raw")})
        out[key] = proj.weights().detach()
    return out


def _model(run: Path) -> dict[str, torch.Tensor]:
    ckpt = load_latest(run / "checkpoints")
    assert ckpt is not None
    return ckpt["model"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("one")
    run_module(["-m", "xbench.train", *COMMON, f"run_dir={tmp / 'run'}"], cwd=tmp)
    return tmp / "run"


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_w_is_identical_on_every_rank_and_equals_one_rank(
    tmp_path: Path, one_rank: Path, parallel: str
) -> None:
    two = tmp_path / "two"
    run_module(
        torchrun("-m", "xbench.train", *COMMON, f"train.parallel={parallel}", f"run_dir={two}"),
        cwd=tmp_path,
    )
    logs = read_jsonl(two / "metrics.jsonl")
    assert [r["step"] for r in logs] == list(range(1, STEPS + 1))
    # Rank 1's W compared with rank 0's after every optimizer step: bit-identical.
    assert [r["train/w_rank_diff"] for r in logs] == [0.0] * STEPS
    # W's values, not the raw parameter r: Adam's update r -= lr m / (sqrt(v) + eps) turns the
    # fp32 reduction-order differences of FSDP's sharded gradients into ~6e-5 on r where the
    # gradient is near 0, while W = softplus(r) / row sum moves by a few 1e-6 (measured).
    w1, w2 = _w(one_rank), _w(two)
    assert w1.keys() == w2.keys() and w1  # W was learned and saved once, in rank 0's checkpoint
    # 1 rank vs 2 ranks is equal up to fp32 reduction order, which Adam amplifies over 20 steps:
    # measured 1.04e-5 (fsdp) and 1.23e-5 (ddp) on W in the v3 world with 2 torch threads, a few
    # 1e-6 before; a W that is not kept in sync drifts far more (train/w_rank_diff above is 0).
    assert max_diff(w1, w2) < 5e-5
    assert max_diff(_model(one_rank), _model(two)) < 5e-5
    # W moved between steps 10 and 20 (a frozen W would pass the checks above trivially).
    assert max_diff(w1, _w(one_rank, STEPS // 2)) > 1e-4
    assert all("train/kd_scale" in r for r in logs)  # the dynamic mixing ran
