"""kd.semantics presets against naive float64 references written from the formulas.

The ``authors`` references follow shared/reference/xtoken_paper.md ("The authors' code") line by
line: loops over chunks and tokens, float64, full real vocabularies (Llama-3 128,256 x Qwen3
151,669, the real W), forward and gradient. ``xbench`` (the default) gets the same treatment at
the end of this file (its tiny-vocabulary references are in tests/test_losses.py); ``trl`` is
compared with TRL's own classes in tests/test_losses_gold_trl.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import xbench.losses as L
from xbench.losses import ChunkOptions as Opts
from xbench.losses import ChunkView
from xbench.losses.options import check_kd_options
from xbench.losses.presets import FORMULAS, PRESETS, exact_pairs_from_w, loss_kwargs

T = 2.0  # a temperature != 1 so that every z/T and T^2 is exercised
K = 8192


@pytest.fixture(scope="module")
def real(llama3_qwen3):
    _, _, w = llama3_qwen3  # the session's one load of the real tokenizers and W (conftest)
    idx, wts = w.indices.long(), w.weights.float()
    g = torch.Generator().manual_seed(0)
    vs, vt = idx.shape[0], int(w.meta.get("V_T", 0)) or int(idx.max()) + 1
    # Hand-made chunks: positions 0 (nothing predicts it) and padding are in no chunk; chunk 2
    # is masked; chunks of 1, 2 and 3 tokens on either side.
    sc = torch.tensor([[-1, 0, 1, 1, 2, 3, 3, 3]])
    tc = torch.tensor([[-1, 0, 0, 1, 2, 2, 3, -1, -1]])
    mask = torch.tensor([[True, True, False, True]])
    zs = torch.randn(1, sc.shape[1], vs, generator=g) * 3
    zt = torch.randn(1, tc.shape[1], vt, generator=g) * 3
    zt[0, 7:] += 6.0  # padding rows with large logits: the authors' column rule includes them
    return {"idx": idx, "w": wts, "zs": zs, "zt": zt, "sc": sc, "tc": tc, "mask": mask}


def chunk_rows(chunk: torch.Tensor, mask: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """Per valid chunk c: the logits rows predicting its tokens (p - 1 for token p)."""
    return [
        [p - 1 for p in range(chunk.shape[1]) if int(chunk[0, p]) == c]
        for c in range(mask.shape[1])
        if bool(mask[0, c])
    ]


def logmean(z: torch.Tensor, rows: list[int]) -> torch.Tensor:
    return torch.stack([F.log_softmax(z[r] / T, -1) for r in rows]).mean(0)


def naive_hybrid(d, zs, cs, ct) -> torch.Tensor:
    vs, vt = zs.shape[-1], d["zt"].shape[-1]
    us = torch.tensor(sorted(set(range(vs)) - set(cs.tolist())))
    ut = torch.tensor(sorted(set(range(vt)) - set(ct.tolist())))
    total = zs.new_zeros(())
    for s_rows, t_rows in zip(
        chunk_rows(d["sc"], d["mask"]), chunk_rows(d["tc"], d["mask"]), strict=True
    ):
        S, Tc = logmean(zs[0], s_rows), logmean(d["zt"][0].double(), t_rows)
        kl = (Tc[ct].exp() * (Tc[ct] - S[cs])).sum()
        a = torch.sort(S[us].exp(), descending=True).values
        b = torch.sort(Tc[ut].exp(), descending=True).values
        m = min(a.numel(), b.numel(), K)
        total = total + T**2 * (kl + (a[:m] - b[:m]).abs().sum())
    return total


def naive_pkl(d, zs, idx, w) -> torch.Tensor:
    zt = d["zt"][0].double()
    cols = torch.sort(zt.max(0).values.topk(K).indices).values  # every position, padding too
    total = zs.new_zeros(())
    for s_rows, t_rows in zip(
        chunk_rows(d["sc"], d["mask"]), chunk_rows(d["tc"], d["mask"]), strict=True
    ):
        q = torch.stack([F.softmax(zs[0, r] / T, -1) for r in s_rows]).mean(0)  # (V_S,)
        proj = q.new_zeros(zt.shape[-1]).index_add(0, idx.flatten(), (q[:, None] * w).flatten())
        P = proj[cols] / (proj[cols].sum() + 1e-10)  # their epsilon, added, not a floor
        Lc = torch.stack([F.log_softmax(zt[r, cols] / T, -1) for r in t_rows]).mean(0)
        total = total + T**2 * (Lc.exp() * (Lc - (P + 1e-10).log())).sum()
    return total


def _compare(ours_fn, ref_fn, d) -> None:
    zs = d["zs"].clone().requires_grad_()
    out = ours_fn(zs)
    (g,) = torch.autograd.grad(out.total, zs)
    zs64 = d["zs"].double().requires_grad_()
    ref = ref_fn(zs64)
    (g64,) = torch.autograd.grad(ref, zs64)
    assert out.total.item() == pytest.approx(ref.item(), rel=2e-4, abs=1e-5)
    assert torch.allclose(g.double(), g64, rtol=1e-3, atol=2e-6)


def _args(d, zs):
    return (zs, d["zt"], ChunkView(d["sc"], d["tc"], d["mask"]))


@pytest.mark.parametrize("method", ["gold", "hkl"])
def test_authors_gold_hkl_match_naive(real, method: str) -> None:
    d = real
    if method == "gold":
        cs, ct = exact_pairs_from_w(d["idx"], d["w"])
    else:
        from xbench.tokenpair.projection import Projection
        from xbench.tokenpair.projection_pairs import relaxed_common_pairs

        cs, ct = relaxed_common_pairs(Projection(d["idx"], d["w"], {}), 0.6)
    opts = Opts(temperature=T, chunk_size=3, **loss_kwargs("authors", method))
    _compare(
        lambda zs: L.get(method)(*_args(d, zs), (cs, ct), options=opts),
        lambda zs: naive_hybrid(d, zs, cs, ct),
        d,
    )


def test_authors_uld_matches_naive(real) -> None:
    # The authors' l1 rule on the whole vocabularies = the hybrid with no pairs.
    d, none = real, torch.zeros(0, dtype=torch.long)
    opts = Opts(temperature=T, chunk_size=3, **loss_kwargs("authors", "uld"))
    _compare(
        lambda zs: L.get("uld")(*_args(d, zs), options=opts),
        lambda zs: naive_hybrid(d, zs, none, none),
        d,
    )


def test_authors_pkl_and_xtoken_match_naive(real) -> None:
    d = real
    _compare(
        lambda zs: L.get("pkl")(
            *_args(d, zs),
            (d["idx"], d["w"]),
            options=Opts(top_k=K, temperature=T, chunk_size=3, **loss_kwargs("authors", "pkl")),
        ),
        lambda zs: naive_pkl(d, zs, d["idx"], d["w"]),
        d,
    )
    from xbench.tokenpair.projection import Projection
    from xbench.tokenpair.projection_pairs import relaxed_common_pairs

    cs, ct = relaxed_common_pairs(Projection(d["idx"], d["w"], {}), 0.6)
    _compare(
        lambda zs: L.get("xtoken")(
            *_args(d, zs),
            (cs, ct),
            (d["idx"], d["w"]),
            alpha=0.3,
            options=Opts(top_k=K, temperature=T, chunk_size=3, **loss_kwargs("authors", "xtoken")),
        ),
        lambda zs: 0.3 * naive_hybrid(d, zs, cs, ct) + 0.7 * naive_pkl(d, zs, d["idx"], d["w"]),
        d,
    )


def test_authors_kd_matches_naive(real) -> None:
    g = torch.Generator().manual_seed(1)
    vs = real["idx"].shape[0]
    zs0 = torch.randn(2, 5, vs, generator=g) * 3
    zt = torch.randn(2, 5, vs, generator=g) * 3
    labels = torch.tensor([[1, 2, 3, 4, -100], [5, 6, -100, -100, -100]])

    def ref(zs):
        cols = torch.sort(zt.double().reshape(-1, vs).max(0).values.topk(K).indices).values
        total = zs.new_zeros(())
        for b in range(2):
            for p in range(4):
                if labels[b, p + 1] == -100:
                    continue
                ls = F.log_softmax(zs[b, p, cols] / T, -1)
                lt = F.log_softmax(zt[b, p, cols].double() / T, -1)
                total = total + T**2 * (lt.exp() * (lt - ls)).sum()
        return total

    d = {"zs": zs0}
    _compare(
        lambda zs: L.get("kd")(
            zs, zt, labels, temperature=T, top_k=K, **loss_kwargs("authors", "kd")
        ),
        ref,
        d,
    )


def test_authors_gold_map_from_w() -> None:
    idx = torch.tensor([[3, 0], [3, 0], [1, 2], [2, 0], [4, 5]])
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [1.0, 0.0], [0.5, 0.5]])
    cs, ct = exact_pairs_from_w(idx, w)
    # rows 0 and 1 collide on teacher 3: the lowest student id wins; row 2 is not one-hot
    assert cs.tolist() == [0, 3] and ct.tolist() == [3, 2]


def test_every_method_preset_has_a_formula_or_is_refused() -> None:
    methods = ("kd", "uld", "gold", "pkl", "hkl", "xtoken")
    for p in PRESETS:
        for m in methods:
            cfg = {"kd": {"semantics": p}, "teachers": [{"method": m}], "mix": {}, "train": {}}
            if m in FORMULAS[p]:
                check_kd_options(cfg)
            else:
                with pytest.raises(ValueError, match=rf"method={m} has no kd.semantics={p}"):
                    check_kd_options(cfg)
    bad = {
        "kd": {"semantics": "authors", "chunk_method": "chain"},
        "teachers": [{"method": "gold"}],
    }
    with pytest.raises(ValueError, match=r"kd.chunk_method='chain' is decided by kd.semantics"):
        check_kd_options(bad)


# ------------------------------------------- kd.semantics=xbench at the real vocabulary


def meanprob(z: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """xbench's chunk distribution: the mean of the rows' softmax(z / T), renormalised."""
    p = torch.stack([F.softmax(z[r] / T, -1) for r in rows]).mean(0)
    return p / p.sum()


def sorted_l1_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = torch.sort(a, descending=True).values, torch.sort(b, descending=True).values
    m = min(a.numel(), b.numel())
    return (a[:m] - b[:m]).abs().sum() + a[m:].sum() + b[m:].sum()


def naive_xbench_hybrid(d, zs, cs, ct) -> torch.Tensor:
    """w_c sum_j p_T[t_j] (log p_T[t_j] - log p_S[s_j]) + w_u ULD(uncommon), w_c = |pairs|/V_T,
    chunk means of probabilities, no T^2."""
    vs, vt = zs.shape[-1], d["zt"].shape[-1]
    us = torch.tensor(sorted(set(range(vs)) - set(cs.tolist())))
    ut = torch.tensor(sorted(set(range(vt)) - set(ct.tolist())))
    w_c = cs.numel() / vt
    total = zs.new_zeros(())
    for s_rows, t_rows in zip(
        chunk_rows(d["sc"], d["mask"]), chunk_rows(d["tc"], d["mask"]), strict=True
    ):
        P, Q = meanprob(zs[0], s_rows), meanprob(d["zt"][0].double(), t_rows)
        kl = (Q[ct] * (Q[ct].log() - P[cs].log())).sum() if cs.numel() else 0.0
        total = total + w_c * kl + (1 - w_c) * sorted_l1_padded(P[us], Q[ut])
    return total


def naive_xbench_pkl(d, zs, idx, w) -> torch.Tensor:
    """T^2 KL(p_T|S || W^T p_S|S), both renormalised on S = the top-K teacher ids that some W row
    reaches, ranked by the teacher's chunk mass summed over the micro-batch; log floor 1e-10."""
    zt = d["zt"][0].double()
    pairs = list(zip(chunk_rows(d["sc"], d["mask"]), chunk_rows(d["tc"], d["mask"]), strict=True))
    reach = torch.unique(idx[w > 0])
    mass = sum(meanprob(zt, t_rows) for _, t_rows in pairs)
    cols = reach[mass[reach].topk(min(K, reach.numel())).indices]
    total = zs.new_zeros(())
    for s_rows, t_rows in pairs:
        p = meanprob(zs[0], s_rows)
        q = p.new_zeros(zt.shape[-1]).index_add(0, idx.flatten(), (p[:, None] * w).flatten())
        pt = meanprob(zt, t_rows)[cols]
        pt, qt = pt / pt.sum(), q[cols] / q[cols].sum()
        total = total + T**2 * (pt * (pt.log() - qt.clamp_min(1e-10).log())).sum()
    return total


@pytest.fixture(scope="module")
def trl_pairs_real(llama3_qwen3):
    from xbench.tokenpair.projection import exact_common_pairs

    s_tok, t_tok, _ = llama3_qwen3
    return exact_common_pairs(s_tok, t_tok, semantics="trl")


@pytest.mark.parametrize("method", ["uld", "gold", "hkl", "pkl", "xtoken"])
def test_xbench_cross_tokenizer_methods_match_naive(real, trl_pairs_real, method: str) -> None:
    """kd.semantics=xbench (the default), forward and gradient, real vocabularies and W."""
    d = real
    from xbench.tokenpair.projection import Projection
    from xbench.tokenpair.projection_pairs import relaxed_common_pairs

    pairs = {
        "gold": trl_pairs_real,
        "hkl": relaxed_common_pairs(Projection(d["idx"], d["w"], {}), 0.6),
        "uld": (torch.zeros(0, dtype=torch.long),) * 2,
    }
    kw = {"temperature": T, "chunk_size": 3, **loss_kwargs("xbench", method)}
    if method in ("uld", "gold", "hkl"):
        cs, ct = pairs[method]
        extra = () if method == "uld" else ((cs, ct),)
        ours = lambda zs: L.get(method)(*_args(d, zs), *extra, options=Opts(**kw))  # noqa: E731
        ref = lambda zs: naive_xbench_hybrid(d, zs, cs, ct)  # noqa: E731
    elif method == "pkl":
        ours = lambda zs: L.get("pkl")(  # noqa: E731
            *_args(d, zs), (d["idx"], d["w"]), options=Opts(top_k=K, **kw)
        )
        ref = lambda zs: naive_xbench_pkl(d, zs, d["idx"], d["w"])  # noqa: E731
    else:
        cs, ct = pairs["hkl"]

        def ours(zs):
            return L.get("xtoken")(
                *_args(d, zs), (cs, ct), (d["idx"], d["w"]), alpha=0.3, options=Opts(top_k=K, **kw)
            )

        def ref(zs):
            return 0.3 * naive_xbench_hybrid(d, zs, cs, ct) + 0.7 * naive_xbench_pkl(
                d, zs, d["idx"], d["w"]
            )

    _compare(ours, ref, d)


def test_xbench_kd_matches_naive(real) -> None:
    """Per position: the teacher's own top-K ids, log_softmax within them on both sides, forward
    KL, T^2, summed over valid positions."""
    g = torch.Generator().manual_seed(2)
    vs = real["idx"].shape[0]
    zs0 = torch.randn(2, 5, vs, generator=g) * 3
    zt = torch.randn(2, 5, vs, generator=g) * 3
    labels = torch.tensor([[1, 2, 3, 4, -100], [5, 6, -100, -100, -100]])

    def ref(zs):
        total = zs.new_zeros(())
        for b in range(2):
            for p in range(4):
                if labels[b, p + 1] == -100:
                    continue
                cols = zt[b, p].topk(K).indices
                ls = F.log_softmax(zs[b, p, cols] / T, -1)
                lt = F.log_softmax(zt[b, p, cols].double() / T, -1)
                total = total + T**2 * (lt.exp() * (lt - ls)).sum()
        return total

    _compare(
        lambda zs: L.get("kd")(
            zs, zt, labels, temperature=T, top_k=K, **loss_kwargs("xbench", "kd")
        ),
        ref,
        {"zs": zs0},
    )
