"""The column-restricted P-KL kernel equals the generic path it replaces (values and gradients).

Reference = ``pkl_loss``'s generic body (``cross_tokenizer_sums`` over ``projected_kl_terms`` with
the micro-batch teacher top-k columns), the code every P-KL run used before the kernel existed.
"""

from __future__ import annotations

import time

import pytest
import torch
from test_losses_helpers import random_alignment, random_projection
from torch import Tensor

from xbench.losses.chunks import cross_tokenizer_sums
from xbench.losses.pkl import (
    LearnableProjection,
    pkl_loss,
    projected_kl_terms,
    teacher_topk_columns,
)
from xbench.losses.projection_ops import projected_kl_sums, restrict_columns

KEYS = ("kl", "proj_mass_in_topk", "teacher_mass_in_topk", "top1_agree")


def reference(zs, zt, sc, tc, mask, idx, w, top_k, temperature, chunk_size=256):
    """The generic P-KL path of ``pkl_loss`` ("mean" chunks, micro-batch columns)."""
    cols = teacher_topk_columns(zt, tc, mask, top_k, temperature=temperature, chunk_size=chunk_size)

    def term(lq_s: Tensor, lq_t: Tensor, ww: Tensor) -> dict[str, Tensor]:
        return projected_kl_terms(lq_s, lq_t, idx, ww, cols, top_k, temperature)

    sums, _ = cross_tokenizer_sums(
        zs, zt, sc, tc, mask, term, (w,), temperature=temperature, chunk_size=chunk_size
    )
    return sums


def run_both(zs, zt, sc, tc, mask, idx, w0, top_k, temperature, chunk_size=256):
    """[(sums, logits grad, W.raw grad, seconds)] of the reference, then of pkl_loss (kernel)."""
    out = []
    for fast in (False, True):
        t0 = time.perf_counter()
        z = zs.detach().clone().requires_grad_()
        proj = LearnableProjection(idx, w0)
        w = proj.weights()
        if fast:
            o = pkl_loss(z, zt, sc, tc, mask, idx, w, top_k=top_k, temperature=temperature,
                         chunk_size=chunk_size)  # fmt: skip
            sums = {"loss": o.total, **o.components}
        else:
            sums = reference(z, zt, sc, tc, mask, idx, w, top_k, temperature, chunk_size)
        (sums["loss"] * 0.5).backward()  # a non-unit incoming gradient
        out.append((sums, z.grad, proj.raw.grad, time.perf_counter() - t0))
    return out


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("top_k", [7, 1000])  # a column subset; every column (top_k >= V_T)
@pytest.mark.parametrize("chunk_size", [5, 256])  # many slices; one slice
def test_equals_generic_path_small(temperature: float, top_k: int, chunk_size: int) -> None:
    B, Ts, Tt, V_S, V_T, K = 3, 17, 19, 40, 29, 3
    sc, tc, mask, _ = random_alignment(B, Ts, Tt, seed=1)  # 1-3 tokens per chunk per side
    idx, w0 = random_projection(V_S, V_T, K, seed=2)  # with padding slots
    g = torch.Generator().manual_seed(3)
    zs = torch.randn(B, Ts, V_S, generator=g) * 3
    zt = torch.randn(B, Tt, V_T, generator=g) * 3
    (ref, gz_r, gw_r, _), (new, gz_n, gw_n, _) = run_both(
        zs, zt, sc, tc, mask, idx, w0, top_k, temperature, chunk_size
    )
    torch.testing.assert_close(new["loss"], ref["loss"], rtol=1e-5, atol=1e-5)
    for k in KEYS:
        torch.testing.assert_close(new[k], ref[k].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gz_n, gz_r, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw_n, gw_r, rtol=1e-4, atol=1e-6)
    assert gz_n.abs().sum() > 0 and gw_n.abs().sum() > 0


def test_floored_columns_give_the_dense_gradient() -> None:
    """A teacher column no student token maps to has q = 0 (log floored): the loss then depends
    on the student's log-partition, so even one-token chunks get a full-width gradient."""
    B, T, V_S, V_T, K = 2, 9, 12, 20, 2
    sc = torch.arange(T).repeat(B, 1)  # one token per chunk on both sides
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 0] = False
    idx = torch.randint(0, 10, (V_S, K), generator=torch.Generator().manual_seed(0))
    w0 = torch.full((V_S, K), 0.5)  # teacher ids 10..19 receive no mass
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(B, T, V_S, generator=g), torch.randn(B, T, V_T, generator=g)
    (ref, gz_r, gw_r, _), (new, gz_n, gw_n, _) = run_both(zs, zt, sc, sc, mask, idx, w0, V_T, 1.0)
    torch.testing.assert_close(new["loss"], ref["loss"])
    torch.testing.assert_close(gz_n, gz_r, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw_n, gw_r, rtol=1e-4, atol=1e-6)
    assert bool((gz_n[:, 1:].abs().sum((0, 1)) > 0).all())  # every student column moves


def test_hand_made_value() -> None:
    """Two student tokens, three teacher tokens, S = all: q and the KL by hand."""
    zs = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]]))  # position 0 predicts chunk 1
    zt = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [1 / 3] * 3]]))
    sc = tc = torch.tensor([[0, 1]])
    mask = torch.tensor([[False, True]])
    idx = torch.tensor([[0, 1], [2, 0]])  # token 0 -> 0.5 t0 + 0.5 t1; token 1 -> t2
    w = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    sums, n = projected_kl_sums(zs, zt, sc, tc, mask, idx, w)
    q = torch.tensor([0.125, 0.125, 0.75])
    pt = torch.tensor([0.5, 0.25, 0.25])
    assert n == 1
    torch.testing.assert_close(sums["loss"], (pt * (pt / q).log()).sum())
    sub, _ = projected_kl_sums(zs, zt, sc, tc, mask, idx, w, columns=torch.tensor([0, 2]))
    q2, pt2 = q[[0, 2]] / q[[0, 2]].sum(), pt[[0, 2]] / pt[[0, 2]].sum()  # renormalized on S
    torch.testing.assert_close(sub["loss"], (pt2 * (pt2 / q2).log()).sum())


def test_restrict_columns_skips_padding_and_other_columns() -> None:
    idx = torch.tensor([[3, 0], [5, 3], [1, 0]])
    w = torch.tensor([[1.0, 0.0], [0.4, 0.6], [1.0, 0.0]])  # (0, 1) and (2, 1) are padding
    cp = restrict_columns(idx, w, torch.tensor([3, 0]), 6)
    assert cp.s_ids.tolist() == [0, 1] and cp.k_ids.tolist() == [0, 1]
    assert cp.slot.tolist() == [0, 0] and cp.u_ids.tolist() == [0, 1]


def test_bf16_logits_match_the_generic_path() -> None:
    """bf16 logits (the autocast path): both compute in float32 and round the gradient once."""
    B, Ts, Tt, V_S, V_T, K = 2, 15, 15, 64, 48, 3
    sc, tc, mask, _ = random_alignment(B, Ts, Tt, seed=4)
    idx, w0 = random_projection(V_S, V_T, K, seed=5)
    g = torch.Generator().manual_seed(6)
    zs = (torch.randn(B, Ts, V_S, generator=g) * 2).bfloat16()
    zt = (torch.randn(B, Tt, V_T, generator=g) * 2).bfloat16()
    (ref, gz_r, gw_r, _), (new, gz_n, gw_n, _) = run_both(zs, zt, sc, tc, mask, idx, w0, 20, 1.0)
    assert gz_n.dtype == torch.bfloat16
    torch.testing.assert_close(new["loss"], ref["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gz_n.float(), gz_r.float(), rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(gw_n, gw_r, rtol=1e-4, atol=1e-6)


def test_no_grad_and_empty_batch() -> None:
    B, T, V_S, V_T = 1, 6, 10, 12
    idx, w = random_projection(V_S, V_T, 2)
    sc = torch.arange(T)[None]
    none = torch.zeros(B, T, dtype=torch.bool)
    sums, n = projected_kl_sums(torch.randn(B, T, V_S), torch.randn(B, T, V_T), sc, sc, none,
                                idx, w)  # fmt: skip
    assert sums == {} and n == 0
    z = torch.randn(B, T, V_S, requires_grad=True)
    with torch.no_grad():
        valid = torch.arange(T)[None] > 0  # chunk 0 holds position 0, which nothing predicts
        sums, n = projected_kl_sums(z, torch.randn(B, T, V_T), sc, sc, valid, idx, w)
    assert n == T - 1 and not sums["loss"].requires_grad


@pytest.mark.real_assets
def test_real_vocabularies_llama3_qwen3() -> None:
    """Real Llama-3 x Qwen3 W (128,256 x 151,669, K = 4), teacher top-8192: equal values and
    gradients (logits and W), in float32, and the kernel is not slower than the generic path."""
    from xbench.assets import load_tokenizer
    from xbench.tokenpair.projection import load_or_build

    proj = load_or_build(load_tokenizer("llama3"), load_tokenizer("qwen3"))
    V_S, V_T = proj.indices.shape[0], int(proj.meta["V_T"])
    B, T = 2, 32
    sc, tc, mask, _ = random_alignment(B, T, T, seed=7, max_span=2)
    g = torch.Generator().manual_seed(8)
    zs = torch.randn(B, T, V_S, generator=g) * 2
    zt = torch.randn(B, T, V_T, generator=g) * 2
    zt[..., :3000] += 4  # a peaked teacher: its top-8192 columns are mostly real overlap
    (ref, gz_r, gw_r, t_ref), (new, gz_n, gw_n, t_new) = run_both(
        zs, zt, sc, tc, mask, proj.indices, proj.weights, 8192, 1.0
    )
    torch.testing.assert_close(new["loss"], ref["loss"], rtol=1e-5, atol=1e-4)
    for k in KEYS:
        torch.testing.assert_close(new[k], ref[k].float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gz_n, gz_r, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gw_n, gw_r, rtol=1e-4, atol=1e-7)
    assert gw_n.abs().sum() > 0
    print(f"generic {t_ref:.2f} s, kernel {t_new:.2f} s")
    assert t_new < t_ref, (t_new, t_ref)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_teacher_pass_equals_topk_columns_and_logsumexp(temperature: float) -> None:
    """The fused teacher pass picks pkl.teacher_topk_columns' columns and exact log-partitions."""
    from xbench.losses.chunks import build_chunk_index
    from xbench.losses.projection_ops import teacher_lse_and_topk

    B, T, V_T = 3, 21, 300
    _, tc, mask, _ = random_alignment(B, T, T, seed=9)
    zt = torch.randn(B, T, V_T, generator=torch.Generator().manual_seed(10)) * 3
    lse, cols = teacher_lse_and_topk(zt.reshape(-1, V_T), build_chunk_index(tc, mask), 40,
                                     temperature)  # fmt: skip
    ref = teacher_topk_columns(zt, tc, mask, 40, temperature=temperature)
    assert cols is not None and torch.equal(cols, ref)
    torch.testing.assert_close(lse, torch.logsumexp(zt.reshape(-1, V_T) / temperature, -1))
