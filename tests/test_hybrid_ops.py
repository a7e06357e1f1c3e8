"""The closed-form GOLD / H-KL / ULD kernel equals the generic path (values and gradients).

Reference = ``fast=False``: ``cross_tokenizer_sums`` over ``gold.hybrid_terms`` (gold, hkl) or
``sorting.sorted_l1`` (uld) under autograd. The kernel (``hybrid_ops.hybrid_sums``) serves the
forward KL on the pairs with a teacher without gradient, under every chunk method, so every
preset's default (``presets.loss_kwargs``: xbench "mean", trl "chain", authors "logmean" +
top-8192 ULD + T^2 + weights 1:1). tests/test_losses.py, test_presets.py and
test_losses_gold_trl.py check the generic path against naive formulas and TRL.
"""

from __future__ import annotations

import time

import pytest
import torch
from test_losses_helpers import random_alignment

import xbench.losses as L
import xbench.losses.gold as gold_mod
import xbench.losses.hybrid_ops as ops
import xbench.losses.uld as uld_mod
from xbench.losses import ChunkOptions as Opts
from xbench.losses import ChunkView
from xbench.losses.presets import exact_pairs_from_w, loss_kwargs
from xbench.losses.sorting import sorted_l1, sorted_l1_and_sign

# (method, preset) cells; hkl runs gold's code on other pairs, so one preset of it suffices here.
CELLS = [("gold", "xbench"), ("gold", "trl"), ("gold", "authors"), ("hkl", "authors"),
         ("uld", "xbench"), ("uld", "trl"), ("uld", "authors")]  # fmt: skip


def call(method, zs, zt, sc, tc, mask, pairs, ids=None, **kw):
    """``method`` on the batch; ``pairs`` = () for uld; ``kw``: ChunkOptions fields."""
    view = ChunkView(sc, tc, mask, *(ids or ()))
    return L.get(method)(zs, zt, view, *((pairs,) if pairs else ()), options=Opts(**kw))


def run_both(method, zs, zt, sc, tc, mask, pairs, ids=None, **kw):
    """[(total, components, logits grad, seconds)] of the generic path, then of the kernel."""
    out = []
    for fast in (False, True):
        t0 = time.perf_counter()
        z = zs.detach().clone().requires_grad_()
        o = call(method, z, zt, sc, tc, mask, pairs, ids, fast=fast, **kw)
        (o.total * 0.5).backward()  # a non-unit incoming gradient
        out.append((o.total, o.components, z.grad, time.perf_counter() - t0))
    return out


def assert_equal(ref, new, rtol=1e-5, atol=1e-5, g_rtol=1e-4, g_atol=1e-6, flips=0.0) -> None:
    """Equal sums and gradients; a share ``flips`` of the gradient entries may differ, by 1e-3 of
    the gradient's L1 norm in all (a ULD rank whose two sorted values tie up to rounding takes
    the other sign: the entry moves by the probability it carries)."""
    (t_r, c_r, g_r, _), (t_n, c_n, g_n, _) = ref, new
    torch.testing.assert_close(t_n, t_r, rtol=rtol, atol=atol)
    assert set(c_n) == set(c_r)
    for k in c_r:
        torch.testing.assert_close(c_n[k].float(), c_r[k].float(), rtol=rtol, atol=atol)
    g_n, g_r = g_n.float(), g_r.float()
    off = ~torch.isclose(g_n, g_r, rtol=g_rtol, atol=g_atol)
    assert int(off.sum()) <= flips * off.numel(), f"{int(off.sum())} gradient entries differ"
    assert float((g_n - g_r).abs().sum()) <= 1e-3 * float(g_r.abs().sum())
    assert g_n.abs().sum() > 0


def small_case(seed: int, V_S: int = 40, V_T: int = 29, bf16: bool = False):
    B, Ts, Tt = 3, 17, 19
    sc, tc, mask, _ = random_alignment(B, Ts, Tt, seed=seed)  # 1-3 tokens per chunk per side
    g = torch.Generator().manual_seed(seed + 1)
    zs = torch.randn(B, Ts, V_S, generator=g) * 3
    zt = torch.randn(B, Tt, V_T, generator=g) * 3
    if bf16:
        zs, zt = zs.bfloat16(), zt.bfloat16()
    ids = torch.randint(0, V_S, (B, Ts), generator=g), torch.randint(0, V_T, (B, Tt), generator=g)
    pairs = torch.randperm(V_S, generator=g)[:20], torch.randperm(V_T, generator=g)[:20]
    return zs, zt, sc, tc, mask, pairs, ids


@pytest.mark.parametrize(("method", "preset"), CELLS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk_size", [4, 256])  # many slices; one slice
def test_equals_generic_path_small(method: str, preset: str, temperature: float, chunk_size: int):
    zs, zt, sc, tc, mask, pairs, ids = small_case(seed=1)
    kw = dict(loss_kwargs(preset, method), temperature=temperature, chunk_size=chunk_size)
    if kw.get("truncate"):
        kw["truncate"] = 7  # the authors' top-8192 rule at this vocabulary: fewer ranks than V
    ref, new = run_both(method, zs, zt, sc, tc, mask, pairs if method != "uld" else (), ids, **kw)
    assert_equal(ref, new)


@pytest.mark.parametrize("chunk_method", ["mean", "chain", "logmean"])
def test_one_token_chunks_and_ties(chunk_method: str) -> None:
    """One token per chunk on both sides (no chunk block), identical profiles on some rows
    (sign(0) = 0 sub-gradient), all ids paired (empty U_S and U_T: ULD skipped)."""
    B, T, V = 2, 9, 12
    sc = torch.arange(T).repeat(B, 1)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 0] = False
    g = torch.Generator().manual_seed(4)
    zs = torch.randn(B, T, V, generator=g)
    # Sequence 0: the student's own logits, so both sides round alike and the sorted profiles tie
    # exactly (a permutation would tie only up to the rounding of each side's sums).
    zt = zs.clone()
    zt[1] += torch.randn(T, V, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    kw = {"chunk_method": chunk_method}
    ref, new = run_both("uld", zs, zt, sc, sc, mask, (), ids, **kw)
    assert_equal(ref, new)
    every = torch.arange(V)
    ref, new = run_both("gold", zs, zt, sc, sc, mask, (every, every.flip(0)), ids, **kw)
    assert_equal(ref, new)
    assert float(new[1]["l1_uncommon"]) == 0.0 and float(new[1]["student_mass_uncommon"]) == 0.0


def test_sorted_l1_and_sign_matches_autograd() -> None:
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(4, 9, generator=g), torch.rand(4, 6, generator=g)
    b[0, :] = a[0, :6]  # ties on the first ranks of row 0
    for truncate in (None, 4):
        x = a.clone().requires_grad_()
        ref = sorted_l1(x, b, truncate)
        ref.sum().backward()
        out, sign = sorted_l1_and_sign(a, b, truncate)
        torch.testing.assert_close(out, ref.detach())
        torch.testing.assert_close(sign, x.grad)


@pytest.mark.parametrize("method", ["gold", "uld"])
def test_bf16_logits_match_the_generic_path(method: str) -> None:
    """bf16 logits (the autocast path): both compute in float32 and round the gradient once."""
    zs, zt, sc, tc, mask, pairs, ids = small_case(seed=6, bf16=True)
    ref, new = run_both(method, zs, zt, sc, tc, mask, pairs if method == "gold" else (), ids)
    assert new[2].dtype == torch.bfloat16
    assert_equal(ref, new, g_rtol=1e-2, g_atol=1e-5)


def test_generic_path_where_the_kernel_does_not_apply(monkeypatch) -> None:
    """Reverse KL / JSD on the pairs and a teacher that requires grad never reach the kernel;
    every preset's default does."""
    zs, zt, sc, tc, mask, pairs, ids = small_case(seed=7)
    calls: list[int] = []
    real = ops.hybrid_sums

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(gold_mod, "hybrid_sums", spy)
    monkeypatch.setattr(uld_mod, "hybrid_sums", spy)
    for beta in (0.5, 1.0):
        assert torch.isfinite(call("gold", zs, zt, sc, tc, mask, pairs, beta=beta).total)
    zt_g = zt.clone().requires_grad_()
    o = call("hkl", zs, zt_g, sc, tc, mask, pairs)
    o.total.backward()
    assert zt_g.grad is not None and zt_g.grad.abs().sum() > 0
    call("uld", zs, zt_g, sc, tc, mask, ()).total.backward()
    assert not calls
    for preset in ("xbench", "trl", "authors"):
        for method in ("gold", "uld") if preset == "trl" else ("gold", "hkl", "uld"):
            kw = loss_kwargs(preset, method)
            call(method, zs, zt, sc, tc, mask, pairs if method != "uld" else (), ids, **kw)
            assert len(calls) == 1, (preset, method)
            calls.clear()


def test_no_grad_and_empty_batch() -> None:
    zs, zt, sc, tc, mask, pairs, _ = small_case(seed=8)
    none = torch.zeros_like(mask)
    for method, p in (("gold", pairs), ("uld", ())):
        o = call(method, zs.requires_grad_(), zt, sc, tc, none, p)
        assert int(o.count) == 0 and float(o.total.detach()) == 0.0
        with torch.no_grad():
            a = call(method, zs, zt, sc, tc, mask, p, fast=False)
            b = call(method, zs, zt, sc, tc, mask, p)
        assert not b.total.requires_grad
        torch.testing.assert_close(b.total, a.total)


@pytest.mark.real_assets
def test_real_vocabularies_llama3_qwen3(llama3_qwen3) -> None:
    """Real Llama-3 x Qwen3 (128,256 x 151,669): GOLD's TRL string pairs under the trl preset, the
    authors' W one-hot pairs under theirs, H-KL's relaxed W pairs and ULD under xbench's; equal
    values and logit gradients in float32 (timings printed; the benchmark compares them)."""
    from xbench.tokenpair.projection import exact_common_pairs, relaxed_common_pairs

    s_tok, t_tok, proj = llama3_qwen3
    V_S, V_T = proj.indices.shape[0], int(proj.meta["V_T"])
    B, T = 2, 32
    sc, tc, mask, _ = random_alignment(B, T, T, seed=7, max_span=2)
    g = torch.Generator().manual_seed(8)
    zs = torch.randn(B, T, V_S, generator=g) * 2
    zt = torch.randn(B, T, V_T, generator=g) * 2
    ids = torch.randint(0, V_S, (B, T), generator=g), torch.randint(0, V_T, (B, T), generator=g)
    cells = {
        ("gold", "trl"): exact_common_pairs(s_tok, t_tok, semantics="trl"),
        ("gold", "authors"): exact_pairs_from_w(proj.indices, proj.weights),
        ("hkl", "xbench"): relaxed_common_pairs(proj, 0.6),
        ("uld", "xbench"): (),
    }
    for (method, preset), pairs in cells.items():
        kw = loss_kwargs(preset, method)
        ref, new = run_both(method, zs, zt, sc, tc, mask, pairs, ids, **kw)
        # ~1e5 uncommon probabilities per row: a few ranks tie up to rounding (19 of 8.2M
        # entries for uld here).
        assert_equal(ref, new, rtol=1e-4, atol=1e-4, g_atol=1e-7, flips=1e-5)
        print(f"{method}/{preset}: generic {ref[3]:.2f} s, kernel {new[3]:.2f} s")
