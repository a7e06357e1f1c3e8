"""Memory at paper scale: the per-cell estimate printed by plan=true, teacher dtypes, activation
checkpointing, and the numeral watch without a full-vocabulary softmax copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from engine_utils import cell_cfg, max_diff, state

from xbench.engine.memory import describe, param_count
from xbench.engine.models import build_from_config, resolve_dtype
from xbench.engine.session import train


@pytest.mark.parametrize("tied", [True, False])
def test_param_count_matches_a_built_model(tied: bool) -> None:
    arch = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,  # != hidden / heads, as in Qwen3
        "intermediate_size": 96,
        "tie_word_embeddings": tied,
    }
    model = build_from_config(arch, vocab_size=300, seed=0)
    assert param_count(arch, 300) == sum(p.numel() for p in model.parameters())


def test_plan_prints_a_memory_estimate_per_cell_and_the_three_teacher_cell_fits(
    paper_plan: tuple[str, Path],
) -> None:
    lines = paper_plan[0].splitlines()
    cells = [i for i, line in enumerate(lines) if line.startswith("CELL ")]
    assert len(cells) == 12
    mem = {}
    for i in cells:
        name = re.search(r"cell=(\S+)", lines[i]).group(1)
        assert lines[i + 1].strip().startswith("MEM per GPU"), lines[i + 1]
        mem[name] = lines[i + 1]
    three = mem["hkl-phi+pkl-qwen+kd-llama3b"]
    total = float(re.search(r"total=([\d.]+)", three).group(1))
    assert total <= 80 and "WILL NOT FIT" not in three and "checkpointing on" in three
    assert "checkpointing off" in mem["ce"]  # auto turns it on only where it is needed
    # The same cell at micro-batch 8 does not fit, and the estimate says so.
    cfg = cell_cfg(
        "cell=hkl-phi+pkl-qwen+kd-llama3b",
        "train.micro_batch_size=8",
        experiment="llama1b_vs_gold",
    )
    assert "WILL NOT FIT: lower train.micro_batch_size" in describe(cfg)


def test_teachers_default_to_bf16_on_a_gpu_only() -> None:
    spec = {"model": "config", "dtype": "auto"}
    assert resolve_dtype(spec, "teachers[0]", "cuda:0") == torch.bfloat16
    assert resolve_dtype(spec, "teachers[0]", "cpu") == torch.float32
    assert resolve_dtype(spec, "student", "cuda:0") == torch.float32  # fp32 master weights
    assert resolve_dtype({"dtype": "bfloat16"}, "student", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match=r"teachers\[1\]\.dtype must be auto, stored or one of"):
        resolve_dtype({"dtype": "fp8"}, "teachers[1]", "cpu")


def test_numeral_watch_equals_the_softmax_formula() -> None:
    from xbench.engine.metrics import numeral_stats

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 50, generator=g) * 3
    labels = torch.randint(0, 50, (3, 9), generator=g)
    labels[1, 5:] = -100
    num_ids = torch.tensor([4, 7, 20, 33])
    got = numeral_stats(logits, labels, num_ids)
    probs = logits[:, :-1].softmax(-1)  # the reference: a full softmax copy
    tgt = labels[:, 1:]
    valid = tgt != -100
    mass = probs[..., num_ids].sum(-1)
    tprob = probs.gather(-1, tgt.clamp_min(0)[..., None])[..., 0]
    is_num = valid & torch.isin(tgt, num_ids)
    assert torch.allclose(got["mass"], (mass * valid).sum(), atol=1e-5)
    assert torch.allclose(got["target_prob"], (tprob * is_num).sum(), atol=1e-5)
    assert int(got["mass_n"]) == int(valid.sum()) and int(got["target_n"]) == int(is_num.sum())


def test_activation_checkpointing_leaves_the_update_unchanged(tmp_path: Path) -> None:
    fast = ["cell=pkl-A", "train.steps=2", "data.seq_len=48", "world.n_train=200"]
    off = train(cell_cfg(*fast), tmp_path / "off")
    on = train(cell_cfg(*fast, "train.activation_checkpointing=true"), tmp_path / "on")
    assert on["student"].is_gradient_checkpointing and not off["student"].is_gradient_checkpointing
    assert max_diff(state(tmp_path / "off"), state(tmp_path / "on")) < 1e-6
