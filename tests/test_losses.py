"""Loss properties and naive references (tiny vocabularies, CPU, seconds)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_losses_helpers import (
    dense_w,
    naive_chunks,
    naive_sorted_l1,
    random_alignment,
    random_projection,
)

import xbench.losses as L
from xbench.losses import ChunkOptions as Opts
from xbench.losses import ChunkView
from xbench.losses.chunks import rows_log_probs
from xbench.losses.combine import (
    adaptive_teacher_weights,
    average_teacher_logits,
    best_teacher,
    mix_ce_kd,
    teacher_scores,
)
from xbench.losses.kd import divergence_terms
from xbench.losses.sorting import sorted_l1
from xbench.losses.view import build_chunk_index

torch.set_default_dtype(torch.float32)
B, TS, TT, VS, VT, K = 3, 12, 14, 11, 13, 3


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sc, tc, mask, _ = random_alignment(B, TS, TT, seed=2)
    idx, w = random_projection(VS, VT, K, seed=3)
    pairs_s = torch.tensor([0, 2, 3, 5, 8])
    pairs_t = torch.tensor([4, 0, 7, 1, 12])
    return {
        "s": (torch.randn(B, TS, VS, generator=g) * 2).requires_grad_(),
        "t": torch.randn(B, TT, VT, generator=g) * 2,
        "sc": sc, "tc": tc, "mask": mask,
        "sid": torch.randint(0, VS, (B, TS), generator=g),
        "tid": torch.randint(0, VT, (B, TT), generator=g),
        "idx": idx, "w": w, "ps": pairs_s, "pt": pairs_t,
    }  # fmt: skip


def view(d: dict) -> ChunkView:
    """The batch's chunks and token ids."""
    return ChunkView(d["sc"], d["tc"], d["mask"], d["sid"], d["tid"])


def chunk_log_probs(flat, idx, method: str = "mean", temperature: float = 1.0):
    """Log chunk distributions of every valid chunk of ``idx`` from the flat logits."""
    lo, hi = idx.span(0, idx.num_chunks)
    return rows_log_probs(flat[idx.pred_row[lo:hi]], idx, 0, idx.num_chunks, method, temperature)


# ---------------------------------------------------------------- ce / kd


def test_ce_matches_shifted_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 7, 9, generator=g)
    y = torch.randint(0, 9, (2, 7), generator=g)
    y[0, :3] = -100
    out = L.get("ce")(z, y, chunk_size=4)
    ref = F.cross_entropy(z[:, :-1].reshape(-1, 9), y[:, 1:].reshape(-1), reduction="sum")
    assert torch.allclose(out.total, ref, atol=1e-5)
    assert int(out.count) == int((y[:, 1:] != -100).sum())


def naive_kd(zs, zt, y, div, beta, T, top_k=None):
    tot = 0.0
    for b in range(zs.shape[0]):
        for p in range(zs.shape[1] - 1):
            if y[b, p + 1] == -100:
                continue
            a, c = zs[b, p].double() / T, zt[b, p].double() / T
            if top_k:
                cols = c.topk(top_k).indices
                a, c = a[cols], c[cols]
            ps, pt = a.softmax(-1), c.softmax(-1)
            fkl = (pt * (pt.log() - ps.log())).sum()
            rkl = (ps * (ps.log() - pt.log())).sum()
            if div == "forward_kl":
                v = fkl
            elif div == "reverse_kl":
                v = rkl
            else:
                m = beta * pt + (1 - beta) * ps
                v = beta * (pt * (pt / m).log()).sum() + (1 - beta) * (ps * (ps / m).log()).sum()
            tot += float(v) * T * T
    return tot


@pytest.mark.parametrize(
    "div,beta,T,top_k",
    [("forward_kl", 0.5, 1.0, None), ("reverse_kl", 0.5, 2.0, None), ("jsd", 0.3, 1.0, None),
     ("jsd", 0.7, 1.5, 4), ("forward_kl", 0.5, 1.0, 5)],
)  # fmt: skip
def test_kd_matches_naive(div: str, beta: float, T: float, top_k: int | None) -> None:
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(2, 6, 10, generator=g), torch.randn(2, 6, 10, generator=g)
    y = torch.randint(0, 10, (2, 6), generator=g)
    y[1, 4] = -100
    out = L.get("kd")(zs, zt, y, divergence=div, beta=beta, temperature=T, top_k=top_k)
    assert out.total.item() == pytest.approx(naive_kd(zs, zt, y, div, beta, T, top_k), abs=1e-4)
    assert out.total.item() >= 0


def test_kd_zero_for_identical_and_beta_endpoints() -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 5, 8, generator=g)
    zt = torch.randn(2, 5, 8, generator=g)
    y = torch.zeros(2, 5, dtype=torch.long)
    for div in ("forward_kl", "reverse_kl", "jsd"):
        assert abs(L.get("kd")(z, z, y, divergence=div).total.item()) < 1e-6
    f = L.get("kd")(z, zt, y, divergence="forward_kl").total
    r = L.get("kd")(z, zt, y, divergence="reverse_kl").total
    assert torch.allclose(L.get("kd")(z, zt, y, divergence="jsd", beta=0.0).total, f)
    assert torch.allclose(L.get("kd")(z, zt, y, divergence="jsd", beta=1.0).total, r)
    # The endpoints are the scaled limits JSD_b / b (b -> 0) and JSD_b / (1 - b) (b -> 1).
    eps = 1e-3
    lo = L.get("kd")(z.double(), zt.double(), y, divergence="jsd", beta=eps).total / eps
    hi = L.get("kd")(z.double(), zt.double(), y, divergence="jsd", beta=1 - eps).total / eps
    assert lo.item() == pytest.approx(f.item(), rel=2e-2)
    assert hi.item() == pytest.approx(r.item(), rel=2e-2)


def test_divergence_terms_rejects_bad_beta() -> None:
    with pytest.raises(ValueError):
        divergence_terms(torch.zeros(3), torch.zeros(3), "jsd", 1.5)


# ---------------------------------------------------------------- chunks


@pytest.mark.parametrize("method", ["mean", "chain"])
def test_chunk_distributions_match_loops(batch: dict, method: str) -> None:
    idx = build_chunk_index(batch["sc"], batch["mask"], batch["sid"])
    flat = batch["s"].detach().reshape(-1, VS)
    got = chunk_log_probs(flat, idx, method, temperature=1.3).exp()
    ref = naive_chunks(batch["s"].detach(), batch["sc"], batch["mask"], batch["sid"], method, 1.3)
    assert got.shape == ref.shape
    assert torch.allclose(got.double(), ref, atol=1e-6)


def test_chunk_reads_the_predicting_position() -> None:
    """A one-token chunk at position 2 is predicted by the logits at position 1, not 2."""
    z = torch.full((1, 4, 5), -10.0)
    z[0, 1, 3] = 10.0  # position 1 predicts token 3 at position 2
    chunk = torch.tensor([[-1, -1, 0, -1]])
    idx = build_chunk_index(chunk, torch.tensor([[True]]))
    lq = chunk_log_probs(z.reshape(-1, 5), idx)
    assert int(lq.argmax()) == 3 and lq.exp()[0, 3] > 0.99


def test_chunk_index_rejects_position_zero() -> None:
    with pytest.raises(ValueError):
        build_chunk_index(torch.tensor([[0, 0, 1]]), torch.tensor([[True, True]]))


# ---------------------------------------------------------------- uld / gold / hkl


def test_sorted_l1_value_and_grad_match_torch_sort() -> None:
    g = torch.Generator().manual_seed(5)
    a = torch.rand(4, 7, generator=g).requires_grad_()
    b = torch.rand(4, 10, generator=g).requires_grad_()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    v = sorted_l1(a, b)
    r = naive_sorted_l1(a2, b2)
    assert torch.allclose(v, r, atol=1e-6)
    v.sum().backward()
    r.sum().backward()
    assert torch.allclose(a.grad, a2.grad) and torch.allclose(b.grad, b2.grad)
    assert sorted_l1(a.detach(), a.detach()[:, torch.randperm(7)]).abs().max() < 1e-7


def naive_hybrid(d, pairs_s, pairs_t, method, beta=0.0, weights="adaptive"):
    ps = naive_chunks(d["s"].detach(), d["sc"], d["mask"], d["sid"], method)
    pt = naive_chunks(d["t"], d["tc"], d["mask"], d["tid"], method)
    us = [i for i in range(VS) if i not in set(pairs_s.tolist())]
    ut = [i for i in range(VT) if i not in set(pairs_t.tolist())]
    w_c = len(pairs_s) / VT if weights == "adaptive" else weights[0]
    w_u = 1 - w_c if weights == "adaptive" else weights[1]
    tot = 0.0
    for n in range(ps.shape[0]):
        a, c = ps[n, pairs_s], pt[n, pairs_t]
        if beta == 0:
            kl = (c * (c.log() - a.log())).sum()
        else:
            m = beta * c + (1 - beta) * a
            kl = beta * (c * (c / m).log()).sum() + (1 - beta) * (a * (a / m).log()).sum()
        l1 = naive_sorted_l1(ps[n, us][None], pt[n, ut][None])[0]
        tot += float(w_c * kl + w_u * l1)
    return tot


@pytest.mark.parametrize("method", ["mean", "chain"])
@pytest.mark.parametrize("name", ["gold", "hkl"])
def test_gold_hkl_match_naive(batch: dict, method: str, name: str) -> None:
    d = batch
    for beta, weights in ((0.0, "adaptive"), (0.5, (0.7, 0.3))):
        opts = Opts(beta=beta, weights=weights, chunk_size=2, chunk_method=method)
        out = L.get(name)(d["s"], d["t"], view(d), (d["ps"], d["pt"]), options=opts)
        ref = naive_hybrid(d, d["ps"], d["pt"], method, beta, weights)
        assert out.total.item() == pytest.approx(ref, abs=1e-5)
        assert int(out.count) == int(d["mask"].sum())


def test_uld_matches_naive(batch: dict) -> None:
    d = batch
    out = L.get("uld")(d["s"], d["t"], view(d))
    ps = naive_chunks(d["s"].detach(), d["sc"], d["mask"], d["sid"], "mean")
    pt = naive_chunks(d["t"], d["tc"], d["mask"], d["tid"], "mean")
    assert out.total.item() == pytest.approx(naive_sorted_l1(ps, pt).sum().item(), abs=1e-5)
    assert out.total.item() >= 0


def test_gold_zero_when_identical_and_fully_paired() -> None:
    g = torch.Generator().manual_seed(6)
    z = torch.randn(2, 6, 9, generator=g)
    chunk = torch.tensor([[-1, 0, 1, 2, 3, -1], [-1, 0, 1, 1, 2, 3]])
    mask = torch.ones(2, 4, dtype=torch.bool)
    ids = torch.arange(9)
    v = ChunkView(chunk, chunk, mask)
    for beta in (0.0, 0.5, 1.0):
        out = L.get("gold")(z, z, v, (ids, ids), options=Opts(beta=beta))
        assert abs(out.total.item()) < 1e-6
    # and ULD alone is 0 for identical chunk distributions over identical vocabularies
    assert abs(L.get("uld")(z, z, v).total.item()) < 1e-6


# ---------------------------------------------------------------- pkl / xtoken


def naive_pkl(d, idx, w, top_k, method="mean", T=1.0, scope="microbatch"):
    ps = naive_chunks(d["s"].detach(), d["sc"], d["mask"], d["sid"], method, T)
    pt = naive_chunks(d["t"], d["tc"], d["mask"], d["tid"], method, T)
    q = ps @ dense_w(idx, w.detach().double(), VT)  # (N, V_T)
    cols = torch.sort(pt.sum(0).topk(top_k).indices).values if scope == "microbatch" else None
    tot = 0.0
    for n in range(ps.shape[0]):
        c = cols if cols is not None else pt[n].topk(top_k).indices
        a, b = pt[n, c] / pt[n, c].sum(), q[n, c] / q[n, c].sum()
        tot += float((a * (a.log() - b.clamp_min(1e-300).log())).sum()) * T * T
    return tot


@pytest.mark.parametrize(
    "method,top_k,scope,T",
    [("mean", 13, "microbatch", 1.0), ("mean", 6, "microbatch", 1.0), ("chain", 6, "chunk", 2.0),
     ("mean", 5, "chunk", 1.0)],
)  # fmt: skip
def test_pkl_matches_dense_reference(batch: dict, method, top_k, scope, T) -> None:
    d = batch
    idx, w = d["idx"], d["w"]
    # Make every teacher column reachable so the dense reference has no log(0).
    idx[:, 0] = torch.arange(VS) % VT
    idx[VS - (VT - VS) :, 1] = torch.arange(VS, VT)
    w = torch.where(idx[:, 1:2] >= VS, torch.tensor([0.5, 0.5, 0.0]), w)
    opts = Opts(top_k=top_k, top_k_scope=scope, temperature=T, chunk_size=3, chunk_method=method)
    out = L.get("pkl")(d["s"], d["t"], view(d), (idx, w), options=opts)
    assert out.total.item() == pytest.approx(
        naive_pkl(d, idx, w, top_k, method, T, scope), abs=1e-4
    )
    assert out.total.item() >= 0


def test_pkl_zero_when_teacher_is_projected_student() -> None:
    """Identity-like W (V_S == V_T, W = I): P-KL over all columns is KD; equal logits -> 0."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, 6, 9, generator=g)
    chunk = torch.tensor([[-1, 0, 1, 2, 3, -1], [-1, 0, 1, 1, 2, 3]])
    mask = torch.ones(2, 4, dtype=torch.bool)
    idx = torch.arange(9)[:, None]
    w = torch.ones(9, 1)
    out = L.get("pkl")(z, z, ChunkView(chunk, chunk, mask), (idx, w), options=Opts(top_k=9))
    assert abs(out.total.item()) < 1e-6
    assert out.components["top1_agree"].item() == 4 + 4


def test_learnable_projection_starts_at_w0_and_gets_grads(batch: dict) -> None:
    d = batch
    proj = L.LearnableProjection(d["idx"], d["w"])
    assert torch.allclose(proj.weights(), d["w"], atol=1e-5)
    assert torch.all(proj.weights()[d["w"] == 0] == 0)
    out = L.get("pkl")(d["s"], d["t"], view(d), (proj.indices, proj.weights()),
                       options=Opts(top_k=8, chunk_size=2))  # fmt: skip
    out.total.backward()
    assert proj.raw.grad is not None and torch.isfinite(proj.raw.grad).all()
    assert proj.raw.grad.abs().sum() > 0
    (grp,) = proj.param_groups()
    assert grp["lr"] == 1e-2 and grp["params"][0] is proj.raw


def test_xtoken_endpoints(batch: dict) -> None:
    d = batch
    common = (d["s"], d["t"], view(d))
    pairs, w = (d["ps"], d["pt"]), (d["idx"], d["w"])
    h = L.get("hkl")(*common, pairs)
    p = L.get("pkl")(*common, w, options=Opts(top_k=6))
    for alpha, ref in ((1.0, h.total), (0.0, p.total), (0.3, 0.3 * h.total + 0.7 * p.total)):
        x = L.get("xtoken")(*common, pairs, w, alpha=alpha, options=Opts(top_k=6))
        assert torch.allclose(x.total, ref, atol=1e-5)


# ---------------------------------------------------------------- cross-cutting properties


def call(name: str, d: dict, chunk_size: int | None, **kw):
    common = (d["s"], d["t"], view(d))
    pairs = (d["ps"], d["pt"])
    if name == "ce":
        y = d["sid"].clone()
        y[:, :2] = -100
        return L.get("ce")(d["s"], y, chunk_size=chunk_size)
    if name == "kd":
        y = d["sid"].clone()
        y[:, :2] = -100
        return L.get("kd")(d["s"], d["s"].detach().flip(-1) * 0.5, y, chunk_size=chunk_size,
                           divergence="jsd", beta=0.4)  # fmt: skip
    if name == "uld":
        return L.get("uld")(*common, options=Opts(chunk_size=chunk_size, chunk_method="chain"))
    if name in ("gold", "hkl"):
        return L.get(name)(*common, pairs, options=Opts(chunk_size=chunk_size))
    w = (d["idx"], kw.get("w", d["w"]))
    opts = Opts(top_k=7, top_k_scope=kw.get("scope", "microbatch"), chunk_size=chunk_size)
    if name == "pkl":
        return L.get("pkl")(*common, w, options=opts)
    return L.get("xtoken")(*common, pairs, w, alpha=0.4, options=opts)


NAMES = ["ce", "kd", "uld", "gold", "hkl", "pkl", "xtoken"]


@pytest.mark.parametrize("name", NAMES)
def test_chunked_equals_unchunked_with_grads(batch: dict, name: str) -> None:
    d = batch
    w = d["w"].clone().requires_grad_()
    outs, grads = [], []
    for cs in (None, 2):
        d["s"].grad = None
        w.grad = None
        out = call(name, d, cs, w=w)
        out.total.backward()
        outs.append(out)
        grads.append((d["s"].grad.clone(), None if w.grad is None else w.grad.clone()))
    assert torch.allclose(outs[0].total, outs[1].total, atol=1e-5)
    assert torch.equal(outs[0].count, outs[1].count)
    for k in outs[0].components:
        assert torch.allclose(outs[0].components[k], outs[1].components[k], atol=1e-4), k
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert torch.isfinite(grads[0][0]).all()
    if grads[0][1] is not None:
        assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_split_batch_sums_to_whole(batch: dict, name: str) -> None:
    """Accumulation invariance: totals and counts of two halves add up to the whole batch."""
    d = batch
    # P-KL's microbatch column set depends on the split by design; per-chunk top-k does not.
    whole = call(name, d, 4, scope="chunk")
    halves = []
    for sl in (slice(0, 1), slice(1, B)):
        part = {k: (v[sl] if k in ("s", "t", "sc", "tc", "mask", "sid", "tid") else v)
                for k, v in d.items()}  # fmt: skip
        halves.append(call(name, part, 4, scope="chunk"))
    both = halves[0] + halves[1]
    assert torch.allclose(both.total, whole.total, atol=1e-5)
    assert int(both.count) == int(whole.count)
    for k in whole.components:
        assert torch.allclose(both.components[k], whole.components[k], atol=1e-4), k


@pytest.mark.parametrize("name", NAMES)
def test_all_masked_is_zero_without_nan(batch: dict, name: str) -> None:
    d = dict(batch)
    d["mask"] = torch.zeros_like(d["mask"])
    d["sid"] = torch.full_like(d["sid"], -100)  # ce/kd labels are all ignored too
    out = call(name, d, 2)
    assert out.total.item() == 0.0 and int(out.count) == 0
    out.total.backward()
    assert torch.isfinite(d["s"].grad).all()


def test_registry_unknown_name() -> None:
    with pytest.raises(KeyError, match="known"):
        L.get("nope")
    assert set(NAMES) <= set(L.available())
    assert L.get("gold") is L.get("hkl")  # one function; the pairs passed in differ


def test_options_a_loss_does_not_read_are_refused(batch: dict) -> None:
    """A ChunkOptions field set away from its default that the loss ignores: one sentence."""
    d = batch
    with pytest.raises(ValueError, match=r"ChunkOptions.beta=0.5 is not read by the uld loss"):
        L.get("uld")(d["s"], d["t"], view(d), options=Opts(beta=0.5))
    with pytest.raises(ValueError, match=r"ChunkOptions.truncate=8 is not read by the pkl loss"):
        L.get("pkl")(d["s"], d["t"], view(d), (d["idx"], d["w"]), options=Opts(truncate=8))
    with pytest.raises(ValueError, match=r"ChunkOptions.weights='fixed' is unknown"):
        L.get("gold")(d["s"], d["t"], view(d), (d["ps"], d["pt"]), options=Opts(weights="fixed"))
    with pytest.raises(ValueError, match="chunk_method='chain' needs the token ids"):
        L.get("uld")(d["s"], d["t"], ChunkView(d["sc"], d["tc"], d["mask"]),
                     options=Opts(chunk_method="chain"))  # fmt: skip


# ---------------------------------------------------------------- combine


def test_dynamic_scaling_matches_the_authors_formula() -> None:
    ce = torch.tensor(3.0, requires_grad=True)
    kd = torch.tensor(2.0, requires_grad=True)
    loss, logs = mix_ce_kd(ce, kd, mode="dynamic")
    assert loss.item() == pytest.approx(3.0 + 1.5 * 2.0)  # 2 CE
    loss.backward()
    assert kd.grad.item() == pytest.approx(1.5)  # sg(|CE|/|KD|) times dKD
    assert ce.grad.item() == pytest.approx(1.0)
    assert logs["kd_scale"].item() == pytest.approx(1.5) and logs["kd_scale_capped"] == 0
    loss, _ = mix_ce_kd(torch.tensor(1.5), torch.tensor(1.0), mode="fixed", kd_weight=0.5)
    assert loss.item() == pytest.approx(1.5 + 0.5)


def test_dynamic_scaling_with_negative_or_tiny_kd() -> None:
    # GOLD/H-KL's sub-vector KD can be negative: the scale stays positive (|KD|), the KD gradient
    # keeps its sign, and the value is CE - |CE| = 0, never below -2 CE.
    ce = torch.tensor(4.0)
    kd = torch.tensor(-0.03, requires_grad=True)
    loss, logs = mix_ce_kd(ce, kd, mode="dynamic")
    assert logs["kd_scale"].item() == pytest.approx(4.0 / 0.03) and loss.item() == pytest.approx(0)
    loss.backward()
    assert kd.grad.item() > 0
    # A KD near 0 is capped at max_scale, and the cap is logged.
    loss, logs = mix_ce_kd(ce, torch.tensor(1e-9), mode="dynamic", max_scale=100.0)
    assert logs["kd_scale"].item() == 100.0 and logs["kd_scale_capped"].item() == 1.0
    assert abs(loss.item()) <= 2 * ce.item()
    with pytest.raises(ValueError, match=r"mix.mode='sum'; use one of"):
        mix_ce_kd(ce, kd, mode="sum")  # type: ignore[arg-type]


def test_multi_teacher_helpers() -> None:
    w = adaptive_teacher_weights([torch.tensor(0.0), torch.tensor(math.log(3.0))])
    assert torch.allclose(w, torch.tensor([0.25, 0.75]))
    assert best_teacher([torch.tensor(-2.0), torch.tensor(-1.0)]) == 1
    z1, z2 = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    assert torch.allclose(average_teacher_logits([z1, z2]), (z1 + z2) / 2)
    with pytest.raises(ValueError, match="same-vocabulary"):
        average_teacher_logits([z1, torch.randn(1, 4, 7)])
    y = torch.randint(0, 6, (1, 4))
    good = torch.full((1, 4, 6), -5.0)
    good[0, torch.arange(3), y[0, 1:]] = 5.0
    for kind in ("neg_ce", "neg_entropy", "max_prob"):
        assert teacher_scores(good, y, kind) > teacher_scores(torch.zeros(1, 4, 6), y, kind)


# ---------------------------------------------------------------- fast paths (driver)


def test_token_slices_bound_rows_per_side(batch: dict) -> None:
    from xbench.losses.chunks import token_slices

    s_idx = build_chunk_index(batch["sc"], batch["mask"], batch["sid"])
    t_idx = build_chunk_index(batch["tc"], batch["mask"], batch["tid"])
    for cap in (1, 3, 5):
        sl = token_slices(s_idx, t_idx, cap)
        assert sl[0][0] == 0 and sl[-1][1] == s_idx.num_chunks
        assert all(sl[i][1] == sl[i + 1][0] for i in range(len(sl) - 1))
        for a, b in sl:
            rows = max(
                int(s_idx.offsets[b] - s_idx.offsets[a]), int(t_idx.offsets[b] - t_idx.offsets[a])
            )
            assert rows <= cap or b == a + 1  # a longer chunk forms its own slice
    assert token_slices(s_idx, t_idx, None) == [(0, s_idx.num_chunks)]


@pytest.mark.parametrize("name", ["gold", "pkl", "xtoken"])
def test_eager_slices_match_one_graph_with_scaled_upstream(batch: dict, name: str) -> None:
    """Slice-wise gradients during the forward == one autograd graph, for logits and learnable W,
    also when the loss is scaled downstream (backward gets a gradient != 1)."""
    d = batch
    common = (d["s"], d["t"], view(d))
    res = []
    for ckpt in (False, True):
        proj = L.LearnableProjection(d["idx"], d["w"])
        d["s"].grad = None
        if name == "gold":
            opts = Opts(beta=0.3, chunk_size=2, use_checkpoint=ckpt, chunk_method="chain")
            out = L.get("gold")(*common, (d["ps"], d["pt"]), options=opts)
        elif name == "pkl":
            opts = Opts(top_k=7, chunk_size=2, use_checkpoint=ckpt, temperature=1.7)
            out = L.get("pkl")(*common, (proj.indices, proj.weights()), options=opts)
        else:
            out = L.get("xtoken")(*common, (d["ps"], d["pt"]), (proj.indices, proj.weights()),
                                  alpha=0.4, options=Opts(top_k=7, chunk_size=3,
                                                          use_checkpoint=ckpt))  # fmt: skip
        (2.5 * out.total).backward()
        gw = proj.raw.grad.clone() if proj.raw.grad is not None else None
        res.append((out.total.detach(), d["s"].grad.clone(), gw))
    assert torch.allclose(res[0][0], res[1][0], atol=1e-5)
    assert torch.allclose(res[0][1], res[1][1], atol=1e-6)
    if res[0][2] is not None:
        assert torch.allclose(res[0][2], res[1][2], atol=1e-6)


def test_eager_slices_refuse_second_backward(batch: dict) -> None:
    d = batch
    out = L.get("uld")(d["s"], d["t"], view(d), options=Opts(chunk_size=2))
    out.total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        out.total.backward()


def test_teacher_topk_mass_matches_chunk_distributions(batch: dict) -> None:
    """The weighted-softmax mass of the 'mean' column pick == summed chunk distributions."""
    from xbench.losses.pkl import teacher_topk_columns

    d = batch
    pt = naive_chunks(d["t"], d["tc"], d["mask"], d["tid"], "mean", 1.3)
    for k in (3, 6, 9):
        ref = torch.sort(pt.sum(0).topk(k).indices).values
        got = teacher_topk_columns(d["t"], view(d), k, options=Opts(temperature=1.3, chunk_size=2))
        assert torch.equal(got, ref)
