"""The column-restricted P-KL kernel equals the generic path (values and gradients), per preset.

Reference = ``pkl_loss(..., fast=False)``: ``cross_tokenizer_sums`` over ``projected_kl_terms``
with issue 13/20's semantics (S among the reachable teacher columns, log floor 1e-10 on the
renormalised projected mass; the authors' max-logit columns and in-S teacher log-means). The
kernel serves the xbench preset (micro-batch columns, "mean" chunks, forward KL) and the authors'
preset; tests/test_presets.py and tests/test_losses.py check both against naive float64 formulas.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from test_losses_helpers import random_alignment, random_projection

import xbench.losses.pkl as pkl_mod
from xbench.losses import ChunkOptions as Opts
from xbench.losses import ChunkView
from xbench.losses.pkl import LearnableProjection, pkl_loss, teacher_topk_columns
from xbench.losses.projection_ops import projected_kl_sums, restrict_columns

KEYS = (
    "kl",
    "proj_mass_in_topk",
    "teacher_mass_in_topk",
    "top1_agree",
    "teacher_mass_unreachable",
)
PRESETS = ("xbench", "authors")


def run_both(zs, zt, sc, tc, mask, idx, w0, top_k, temperature, chunk_size=256, authors=False):
    """[(sums, logits grad, W.raw grad, seconds)] of the generic path, then of the kernel."""
    out = []
    for fast in (False, True):
        t0 = time.perf_counter()
        z = zs.detach().clone().requires_grad_()
        proj = LearnableProjection(idx, w0)
        opts = Opts(top_k=top_k, temperature=temperature, chunk_size=chunk_size,
                    authors=authors, fast=fast)  # fmt: skip
        o = pkl_loss(z, zt, ChunkView(sc, tc, mask), (idx, proj.weights()), options=opts)
        sums = {"loss": o.total, **o.components}
        (sums["loss"] * 0.5).backward()  # a non-unit incoming gradient
        out.append((sums, z.grad, proj.raw.grad, time.perf_counter() - t0))
    return out


def assert_equal(ref, new, rtol=1e-5, atol=1e-5, g_rtol=1e-4, g_atol=1e-6) -> None:
    (r, gz_r, gw_r, _), (n, gz_n, gw_n, _) = ref, new
    assert set(n) == set(r)
    torch.testing.assert_close(n["loss"], r["loss"], rtol=rtol, atol=atol)
    for k in KEYS:
        torch.testing.assert_close(n[k], r[k].float(), rtol=rtol, atol=atol)
    torch.testing.assert_close(gz_n.float(), gz_r.float(), rtol=g_rtol, atol=g_atol)
    torch.testing.assert_close(gw_n, gw_r, rtol=g_rtol, atol=g_atol)
    assert gz_n.abs().sum() > 0 and gw_n.abs().sum() > 0


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("top_k", [7, 1000])  # a column subset; every (reachable) column
@pytest.mark.parametrize("chunk_size", [5, 256])  # many slices; one slice
def test_equals_generic_path_small(preset: str, temperature: float, top_k: int, chunk_size: int):
    B, Ts, Tt, V_S, V_T, K = 3, 17, 19, 40, 29, 3
    sc, tc, mask, _ = random_alignment(B, Ts, Tt, seed=1)  # 1-3 tokens per chunk per side
    idx, w0 = random_projection(V_S, V_T, K, seed=2)  # with padding slots
    idx[idx == 5] = 4  # teacher id 5 unreachable: xbench drops it, the authors' rule may keep it
    g = torch.Generator().manual_seed(3)
    zs = torch.randn(B, Ts, V_S, generator=g) * 3
    zt = torch.randn(B, Tt, V_T, generator=g) * 3
    ref, new = run_both(zs, zt, sc, tc, mask, idx, w0, top_k, temperature, chunk_size,
                        authors=preset == "authors")  # fmt: skip
    assert_equal(ref, new)
    if preset == "xbench":
        assert new[0]["teacher_mass_unreachable"] > 0


def one_token_case(V_S=12, V_T=20, reach=10):
    """One token per chunk on both sides; W maps every student id into teacher ids < ``reach``."""
    B, T, K = 2, 9, 2
    sc = torch.arange(T).repeat(B, 1)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 0] = False
    idx = torch.randint(0, reach, (V_S, K), generator=torch.Generator().manual_seed(0))
    w0 = torch.full((V_S, K), 0.5)
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(B, T, V_S, generator=g),
        torch.randn(B, T, V_T, generator=g),
        sc,
        mask,
        idx,
        w0,
    )


def test_unreachable_columns_are_dropped_and_one_token_gradient_is_sparse() -> None:
    """xbench: teacher ids 10..19 get no W mass and leave S (their teacher mass is only logged).
    q is then never floored, r = q / Q is scale-free, so with one token per chunk the loss does
    not depend on the student's log-partition: student ids with no W entry in S get exactly 0."""
    zs, zt, sc, mask, idx, w0 = one_token_case()
    ref, new = run_both(zs, zt, sc, sc, mask, idx, w0, 4, 1.0)  # S: 4 of the reachable ids
    assert_equal(ref, new)
    unreach = torch.ones(20, dtype=torch.bool)
    unreach[idx.flatten()] = False
    assert bool(unreach[10:].all())
    p_t = torch.softmax(zt[:, :-1], -1)  # row p - 1 predicts chunk p (1..8)
    torch.testing.assert_close(new[0]["teacher_mass_unreachable"], p_t[..., unreach].sum())
    gz = new[1]
    view = ChunkView(sc, sc, mask)
    cols = teacher_topk_columns(zt, view, 4, allowed=torch.nonzero(~unreach).squeeze(1))
    hit = torch.zeros(zs.shape[-1], dtype=torch.bool)
    hit[restrict_columns(idx, w0, cols, 20).u_ids] = True
    assert 0 < int(hit.sum()) < zs.shape[-1]
    assert bool((gz[:, :-1][..., ~hit] == 0).all()) and bool((gz[:, :-1][..., hit] != 0).any())
    assert bool((gz[:, -1] == 0).all())  # the last row predicts nothing


def test_authors_keeps_unreachable_columns_floored() -> None:
    """authors: S = the max-logit ids, unreachable ones included; their r = 0 enters as
    log(0 + 1e-10) = -23 (the authors' added epsilon: r = q / (Q + eps), log(r + eps)), with no
    gradient (no W entry lands there)."""
    zs, zt, sc, mask, idx, w0 = one_token_case()
    zt[..., 15] += 8.0  # an unreachable id with the largest logits: surely in S
    ref, new = run_both(zs, zt, sc, sc, mask, idx, w0, 12, 1.0, authors=True)
    assert_equal(ref, new)
    assert new[0]["teacher_mass_unreachable"] == 0  # authors: not split off
    cols = pkl_mod.max_logit_columns(zt, 12)
    assert 15 in cols.tolist()
    # value by hand: pt from in-S log_softmax, q renormalised in S, floor on column 15
    rows = zt[:, :-1].reshape(-1, 20)[:, cols]
    log_pt = torch.log_softmax(rows, -1)
    p_s = torch.softmax(zs[:, :-1].reshape(-1, zs.shape[-1]), -1)
    q = torch.zeros(p_s.shape[0], 20).index_add_(
        1, idx.flatten(), (p_s[:, :, None] * w0).flatten(1)
    )
    q = q[:, cols]
    r = q / (q.sum(-1, keepdim=True) + 1e-10) + 1e-10
    want = (log_pt.exp() * (log_pt - r.log())).sum()
    torch.testing.assert_close(new[0]["loss"], want, rtol=1e-5, atol=1e-5)
    assert float((log_pt.exp()[:, cols.tolist().index(15)]).min()) > 0.5  # floor carries weight


@pytest.mark.parametrize("authors", [False, True])
def test_floor_on_underflowed_reachable_column(authors: bool) -> None:
    """A reachable column whose projected share is below 1e-10 is treated the same way on both
    paths: floored with no gradient (xbench), or the authors' added epsilon, which passes one."""
    zs, zt, sc, mask, idx, w0 = one_token_case(V_S=12, V_T=10, reach=10)
    idx[0] = torch.tensor([9, 9])  # teacher id 9 only via student id 0 ...
    idx[1:][idx[1:] == 9] = 8
    zs[..., 0] -= 40.0  # ... whose probability is ~e^-40 = 4e-18
    zt[..., 9] += 3.0  # and the teacher wants it
    ref, new = run_both(zs, zt, sc, sc, mask, idx, w0, 10, 1.0, authors=authors)
    assert_equal(ref, new)
    assert new[0]["kl"] > 10  # the floored column dominates: pt_9 * (log pt_9 + 23)


def test_hand_made_value() -> None:
    """Two student tokens, three teacher tokens, S = all: q and the KL by hand."""
    zs = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]]))  # position 0 predicts chunk 1
    zt = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [1 / 3] * 3]]))
    sc = tc = torch.tensor([[0, 1]])
    mask = torch.tensor([[False, True]])
    idx = torch.tensor([[0, 1], [2, 0]])  # token 0 -> 0.5 t0 + 0.5 t1; token 1 -> t2
    w = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    view = ChunkView(sc, tc, mask)
    sums, n = projected_kl_sums(zs, zt, view, (idx, w))
    q = torch.tensor([0.125, 0.125, 0.75])
    pt = torch.tensor([0.5, 0.25, 0.25])
    assert n == 1
    torch.testing.assert_close(sums["loss"], (pt * (pt / q).log()).sum())
    sub, _ = projected_kl_sums(zs, zt, view, (idx, w), columns=torch.tensor([0, 2]))
    q2, pt2 = q[[0, 2]] / q[[0, 2]].sum(), pt[[0, 2]] / pt[[0, 2]].sum()  # renormalized on S
    torch.testing.assert_close(sub["loss"], (pt2 * (pt2 / q2).log()).sum())
    # S limited to reachable ids {0, 2}: the same set, and t1's teacher mass is "unreachable"
    r, _ = projected_kl_sums(zs, zt, view, (idx, w), reach=torch.tensor([0, 2]))
    torch.testing.assert_close(r["loss"], sub["loss"])
    torch.testing.assert_close(r["teacher_mass_unreachable"], torch.tensor(0.25))


def test_hand_made_authors_value() -> None:
    """authors: a two-token teacher chunk; log pt = mean of the tokens' in-S log-softmax."""
    zs = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5], [0.5, 0.5]]]))
    zt = torch.log(torch.tensor([[[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [1 / 3] * 3]]))
    sc = torch.tensor([[0, 1, -1]])  # student: row 0 predicts the chunk
    tc = torch.tensor([[0, 1, 1]])  # teacher: rows 0 and 1 predict it
    mask = torch.tensor([[False, True]])
    idx = torch.tensor([[0, 1], [2, 0]])
    w = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    cols = torch.tensor([0, 2])
    view = ChunkView(sc, tc, mask)
    sums, _ = projected_kl_sums(zs, zt, view, (idx, w), columns=cols, teacher_log_means=True)
    lp = torch.log_softmax(zt[0, :2][:, cols], -1).mean(0)  # not renormalised
    q = torch.tensor([0.125, 0.75])
    want = (lp.exp() * (lp - (q / q.sum()).log())).sum()
    torch.testing.assert_close(sums["loss"], want)
    assert not math.isclose(float(lp.exp().sum()), 1.0, rel_tol=1e-3)


def test_restrict_columns_skips_padding_and_other_columns() -> None:
    idx = torch.tensor([[3, 0], [5, 3], [1, 0]])
    w = torch.tensor([[1.0, 0.0], [0.4, 0.6], [1.0, 0.0]])  # (0, 1) and (2, 1) are padding
    cp = restrict_columns(idx, w, torch.tensor([3, 0]), 6)
    assert cp.s_ids.tolist() == [0, 1] and cp.k_ids.tolist() == [0, 1]
    assert cp.slot.tolist() == [0, 0] and cp.u_ids.tolist() == [0, 1]


@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_logits_match_the_generic_path(preset: str) -> None:
    """bf16 logits (the autocast path): both compute in float32 and round the gradient once."""
    B, Ts, Tt, V_S, V_T, K = 2, 15, 15, 64, 48, 3
    sc, tc, mask, _ = random_alignment(B, Ts, Tt, seed=4)
    idx, w0 = random_projection(V_S, V_T, K, seed=5)
    g = torch.Generator().manual_seed(6)
    zs = (torch.randn(B, Ts, V_S, generator=g) * 2).bfloat16()
    zt = (torch.randn(B, Tt, V_T, generator=g) * 2).bfloat16()
    ref, new = run_both(zs, zt, sc, tc, mask, idx, w0, 20, 1.0, authors=preset == "authors")
    assert new[1].dtype == torch.bfloat16
    assert_equal(ref, new, g_rtol=1e-2, g_atol=1e-5)


def test_generic_path_where_the_kernel_does_not_apply(monkeypatch) -> None:
    """JSD / reverse KL, per-chunk top-k and chain chunks never reach the kernel."""
    B, T, V_S, V_T = 2, 10, 16, 14
    sc, tc, mask, _ = random_alignment(B, T, T, seed=11)
    idx, w = random_projection(V_S, V_T, 2, seed=12)
    zs, zt = torch.randn(B, T, V_S), torch.randn(B, T, V_T)
    ids = torch.randint(0, V_S, (B, T)), torch.randint(0, V_T, (B, T))

    def boom(*a, **k):
        raise AssertionError("kernel used")

    monkeypatch.setattr(pkl_mod, "projected_kl_sums", boom)
    args = (zs, zt, ChunkView(sc, tc, mask, *ids), (idx, w))
    chain = {"chunk_method": "chain"}
    for kw in ({"beta": 0.5}, {"beta": 1.0, "authors": True}, {"top_k_scope": "chunk"}, chain):
        assert torch.isfinite(pkl_loss(*args, options=Opts(top_k=5, **kw)).total)
    with pytest.raises(AssertionError, match="kernel used"):
        pkl_loss(*args, options=Opts(top_k=5))


def test_no_grad_and_empty_batch() -> None:
    B, T, V_S, V_T = 1, 6, 10, 12
    idx, w = random_projection(V_S, V_T, 2)
    sc = torch.arange(T)[None]
    none = torch.zeros(B, T, dtype=torch.bool)
    sums, n = projected_kl_sums(torch.randn(B, T, V_S), torch.randn(B, T, V_T),
                                ChunkView(sc, sc, none), (idx, w))  # fmt: skip
    assert sums == {} and n == 0
    z = torch.randn(B, T, V_S, requires_grad=True)
    with torch.no_grad():
        valid = torch.arange(T)[None] > 0  # chunk 0 holds position 0, which nothing predicts
        sums, n = projected_kl_sums(z, torch.randn(B, T, V_T), ChunkView(sc, sc, valid), (idx, w))
    assert n == T - 1 and not sums["loss"].requires_grad


@pytest.mark.real_assets
@pytest.mark.parametrize("preset", PRESETS)
def test_real_vocabularies_llama3_qwen3(preset: str, llama3_qwen3) -> None:
    """Real Llama-3 x Qwen3 W (128,256 x 151,669, K = 4), top-8192 columns: equal values and
    gradients (logits and W) in float32; for xbench the kernel is faster than the generic path."""
    proj = llama3_qwen3[2]
    V_S, V_T = proj.indices.shape[0], int(proj.meta["V_T"])
    B, T = 2, 32
    sc, tc, mask, _ = random_alignment(B, T, T, seed=7, max_span=2)
    g = torch.Generator().manual_seed(8)
    zs = torch.randn(B, T, V_S, generator=g) * 2
    zt = torch.randn(B, T, V_T, generator=g) * 2
    zt[..., :3000] += 4  # a peaked teacher: its top-8192 columns are mostly real overlap
    ref, new = run_both(zs, zt, sc, tc, mask, proj.indices, proj.weights, 8192, 1.0,
                        authors=preset == "authors")  # fmt: skip
    assert_equal(ref, new, atol=1e-4, g_atol=1e-7)
    if preset == "xbench":
        assert new[0]["teacher_mass_unreachable"] > 0  # Qwen3 ids no Llama-3 row maps to
    print(f"{preset}: generic {ref[3]:.2f} s, kernel {new[3]:.2f} s")
    if preset == "xbench":
        assert new[3] < ref[3], (new[3], ref[3])


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_teacher_pass_equals_topk_columns_and_logsumexp(temperature: float) -> None:
    """The fused teacher pass picks pkl.teacher_topk_columns' columns among the allowed ids and
    exact log-partitions."""
    from xbench.losses.projection_ops import teacher_lse_and_topk
    from xbench.losses.view import build_chunk_index

    B, T, V_T = 3, 21, 300
    _, tc, mask, _ = random_alignment(B, T, T, seed=9)
    zt = torch.randn(B, T, V_T, generator=torch.Generator().manual_seed(10)) * 3
    allowed = torch.arange(0, V_T, 3)
    t_idx = build_chunk_index(tc, mask)
    lse, cols, mass = teacher_lse_and_topk(zt.reshape(-1, V_T), t_idx, 40, temperature, allowed)
    ref = teacher_topk_columns(
        zt, ChunkView(tc, tc, mask), 40, options=Opts(temperature=temperature), allowed=allowed
    )
    assert torch.equal(cols, ref)
    torch.testing.assert_close(lse, torch.logsumexp(zt.reshape(-1, V_T) / temperature, -1))
    torch.testing.assert_close(mass.sum(), torch.tensor(float(t_idx.num_chunks)))


def test_authors_epsilon_is_added_not_a_floor() -> None:
    """kd.semantics=authors: log(q / (Q + 1e-10) + 1e-10), as in their code, not log max(r, 1e-10):
    a reachable column whose share sits near 1e-10 tells the two apart (by up to p_T log 2)."""
    zs, zt, sc, mask, idx, w0 = one_token_case(V_S=12, V_T=10, reach=10)
    idx[0] = torch.tensor([9, 9])  # teacher id 9 only via student id 0 ...
    idx[1:][idx[1:] == 9] = 8
    zs[..., 0] -= 20.0  # ... whose share of the projected mass is then ~1e-10
    zt[..., 9] += 3.0
    _, new = run_both(zs, zt, sc, sc, mask, idx, w0, 10, 1.0, authors=True)
    rows = zt[:, :-1].reshape(-1, 10)
    pt = torch.softmax(rows, -1)  # S = all 10 columns
    p_s = torch.softmax(zs[:, :-1].reshape(-1, 12), -1)
    q = torch.zeros(p_s.shape[0], 10).index_add_(
        1, idx.flatten(), (p_s[:, :, None] * w0).flatten(1)
    )
    r = q / (q.sum(-1, keepdim=True) + 1e-10)
    assert 1e-11 < float(r[:, 9].median()) < 1e-9  # the regime where the two rules differ
    added = (pt * (pt.log() - (r + 1e-10).log())).sum()
    floored = (pt * (pt.log() - r.clamp_min(1e-10).log())).sum()
    torch.testing.assert_close(new[0]["loss"], added, rtol=1e-5, atol=1e-5)
    assert float(floored - added) > 1.0
