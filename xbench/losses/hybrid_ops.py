"""GOLD, H-KL and ULD with closed-form gradients: one float32 block per side and slice.

Same value and gradients as the generic path (``cross_tokenizer_sums`` + ``gold.hybrid_terms``,
``uld``'s ``sorted_l1``) for the forward KL on the pairs (beta = 0) and a teacher without gradient,
under every chunk method (``mean``, ``chain``, ``logmean``). With lq_S (n, V_S), lq_T (n, V_T) the
chunk log-probabilities (:mod:`xbench.losses.chunks`), (s_j, t_j) the M pairs, U_S / U_T their
complements, f the factor (T^2 or 1):

    L = w_C f sum_j pt_j (lq_T[t_j] - lq_S[s_j])
        + w_U f sum_r |sort_desc(ps_U)_r - sort_desc(pt_U)_r|
    pt = exp(lq_T),  ps_U = exp(lq_S[U_S]),  pt_U = exp(lq_T[U_T])     (ULD: M = 0, w_U = 1)

Its gradient w.r.t. the student chunk log-probabilities is, per chunk c,

    g[s_j] = -w_C f pt_j,   g[u] = w_U f sgn_u ps_u  (u in U_S),   G = sum_v g[v]

with sgn_u = sign(sort(ps_U)_r - sort(pt_U)_r) at u's rank r (tail ranks: sign(ps_u) when
zero-padded, 0 when truncated) -- the sub-gradient autograd takes through the sort. It flows to
the predicting rows z_k of the chunk (p_k = softmax(z_k / T), all times 1/T) as

    one token per chunk:  dz = g - p G
    logmean:              dz_k = (g - p_k G) / n_c
    chain (prefix y_k):   dz_last = g - p_last G,   dz_k = G (onehot(y_k) - p_k)
    mean (S = sum_k p_k): dz_k = p_k * h - p_k <p_k, h>,   h = (g / q - G) / sum S,  q = exp(lq_S)

What is built per slice: each side's predicting rows as log-softmax in one reused float32 block
(rows, V) (the student's later turns, in place, into its rows' gradient); for chunks spanning
several tokens on a side, that side's (chunks, V) chunk block; the two uncommon sub-vectors that
ULD sorts (only the student's needs its permutation, for the gradient); and column blocks of
about 1M elements for the pairs. On CPU a slice holds at most ~4M logits per side (27 rows at
V = 151,669), so each block is ~16 MiB. No permuted copy of a whole row, no autograd graph. The
one full-size tensor is the student-logit gradient itself.

Differences from the generic path, all at float32 rounding: sums are taken in another order (and
``mean`` chunks sum exp(log_softmax) rather than softmax rows), so a ULD rank whose two sorted
values tie up to rounding may take the other sub-gradient sign (11 of 8.2M gradient entries at
Llama-3 x Qwen3, 2 x 32 positions); under ``mean`` the gradient through ``clamp_min(tiny)`` of an
underflowed chunk probability (< 1.2e-38) is not masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from xbench.losses.chunks import with_precomputed_grads
from xbench.losses.ops import block_elems, kernel_plan, row_grad_buffer, scaled_rows_into
from xbench.losses.sorting import sorted_l1_and_sign
from xbench.losses.view import ChunkIndex, ChunkMethod, ChunkOptions, ChunkView

__all__ = ["HYBRID_KEYS", "HybridSets", "hybrid_sums", "uses_kernel"]

HYBRID_KEYS = ("kl_common", "l1_uncommon", "loss", "student_mass_uncommon", "teacher_mass_common")


@dataclass(frozen=True)
class HybridSets:
    """The vocabulary partition of a hybrid loss and its two term weights.

    Attributes:
        common_s, common_t: (M,) long, the pairs (s_j, t_j).
        uncommon_s: (V_S - M',) sorted student ids outside the pairs; uncommon_t likewise.
        w_common, w_uncommon: term weights.
    """

    common_s: Tensor
    common_t: Tensor
    uncommon_s: Tensor
    uncommon_t: Tensor
    w_common: float
    w_uncommon: float

    @classmethod
    def build(
        cls, pairs: tuple[Tensor, Tensor], v_s: int, v_t: int, weights: str | tuple[float, float]
    ) -> HybridSets:
        """From the pairs, both head widths and ``weights``: ``"adaptive"`` gives
        w_common = |pairs| / V_T (V_T = teacher head width), w_uncommon = 1 - w_common; a tuple
        gives itself. ULD is the case of no pairs with weights (0, 1).

        Raises:
            ValueError: the two id lists differ in length, or ``weights`` is another string.
        """
        cs, ct = pairs[0].long(), pairs[1].long()
        if cs.shape != ct.shape:
            raise ValueError("the pairs must be 1-to-1: student and teacher ids of equal length")
        if weights == "adaptive":
            w_c = int(cs.numel()) / max(1, v_t)
            w_c, w_u = w_c, 1.0 - w_c
        elif isinstance(weights, str):
            raise ValueError(
                f"ChunkOptions.weights={weights!r} is unknown; use 'adaptive' or "
                "(w_common, w_uncommon)."
            )
        else:
            w_c, w_u = float(weights[0]), float(weights[1])
        return cls(cs, ct, _complement(cs, v_s), _complement(ct, v_t), w_c, w_u)


def _complement(ids: Tensor, size: int) -> Tensor:
    """Sorted ids of ``0..size-1`` not in ``ids``."""
    keep = torch.ones(size, dtype=torch.bool, device=ids.device)
    keep[ids] = False
    return torch.nonzero(keep).squeeze(1)


def uses_kernel(options: ChunkOptions, teacher_logits: Tensor) -> bool:
    """Whether gold/hkl/uld take the closed-form kernel: the forward KL on the pairs (beta = 0,
    every preset's default; uld has no pairs) and a teacher without gradient, under every chunk
    method. Reverse KL, JSD and a differentiated teacher keep the generic path."""
    return (
        options.fast
        and options.beta == 0.0
        and not (teacher_logits.requires_grad and torch.is_grad_enabled())
    )


def _log_softmax_rows(flat: Tensor, sel: Tensor, temperature: float, buf: Tensor) -> Tensor:
    """(P, V) float32 log_softmax(flat[sel] / T) written into the reused block ``buf``."""
    y = scaled_rows_into(flat, sel, temperature, buf)
    if y.device.type == "cpu":
        # In place: the CPU kernel reads a row (max, sum of exp) before writing it. Bitwise equal
        # to F.log_softmax, 1.3x faster than it and 1.6x faster than logsumexp + sub in blocks.
        return torch.log_softmax(y, -1, out=y)
    return y.copy_(torch.log_softmax(y, -1))


def _chunk_log_probs(
    y: Tensor, index: ChunkIndex, start: int, end: int, method: ChunkMethod
) -> tuple[Tensor, Tensor | None]:
    """(n, V) chunk log-probs from the rows' log-softmax ``y`` (``chunks.rows_log_probs``'s
    formulas); ``y`` itself for one token per chunk. Also the log row sums of ``mean``."""
    n = end - start
    if y.shape[0] == n:
        return y, None
    lo = int(index.offsets[start])
    rows = index.local_rows(start, end)  # (P,)
    if method == "mean":
        c = y.new_zeros(n, y.shape[1])
        step = max(1, block_elems(y.device) // y.shape[1])
        for i in range(0, y.shape[0], step):
            c.index_add_(0, rows[i : i + step], y[i : i + step].exp())
        log_norm = c.sum(-1, keepdim=True).log()  # (n, 1)
        return c.clamp_min_(torch.finfo(c.dtype).tiny).log_().sub_(log_norm), log_norm
    if method == "logmean":
        counts = index.counts(start, end).to(y.dtype)
        return y.new_zeros(n, y.shape[1]).index_add_(0, rows, y).div_(counts[:, None]), None
    if method == "chain":
        last = index.is_last[lo : lo + y.shape[0]]
        tok_lp = y.gather(1, index.token[lo : lo + y.shape[0], None]).squeeze(1)  # (P,)
        prefix = y.new_zeros(n).index_add_(0, rows[~last], tok_lp[~last])  # (n,)
        return y[last].add_(prefix[:, None]), None
    raise ValueError(f"unknown chunk method {method!r}")


@dataclass(frozen=True)
class _Pairs:
    """The pairs of one slice, read block by block: the teacher chunk log-probs and the ids."""

    lq_t: Tensor  # (m, V_T)
    cs: Tensor  # (M,) student ids
    ct: Tensor  # (M,) teacher ids
    blocks: range  # block starts over 0..M

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(student column ids (b,), teacher probabilities (m, b)) per block."""
        for j in self.blocks:
            sl = slice(j, j + self.blocks.step)
            yield self.cs[sl], self.lq_t.index_select(1, self.ct[sl]).exp_()


def _column_blocks(n_rows: int, m: int, device: torch.device) -> range:
    """Starts of the pair blocks: (n_rows, block) temporaries of about one dense block."""
    return range(0, m, max(1, block_elems(device) // max(1, n_rows)))


def hybrid_sums(
    student_logits: Tensor,
    teacher_logits: Tensor,
    view: ChunkView,
    sets: HybridSets,
    *,
    options: ChunkOptions,
) -> tuple[dict[str, Tensor], int]:
    """Sums of :func:`xbench.losses.gold.hybrid_terms` (beta = 0) over the valid chunks; see the
    module docstring. ULD is the case of no pairs with ``w_uncommon = 1``.

    Args:
        student_logits: (B, Ts, V_S), may require grad; teacher_logits: (B, Tt, V_T), no grad.
        view: the batch's chunks and ids.
        sets: the pairs, their complements and the term weights.
        options: reads ``truncate`` (ULD over the top ranks only), ``t2`` (both terms times
            T^2), ``chunk_method``, ``temperature`` and ``chunk_size`` (max predicting rows per
            side in one slice; on CPU also capped so that a side's (rows, V) float32 block stays
            ~16 MiB).

    Returns:
        ``(sums, n_chunks)`` with :data:`HYBRID_KEYS`; empty dict when no chunk is valid.
    """
    if teacher_logits.requires_grad and torch.is_grad_enabled():
        raise ValueError("hybrid_sums differentiates the student only; use the generic path")
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    chunk_method, temperature, truncate = (
        options.chunk_method,
        options.temperature,
        options.truncate,
    )
    plan = kernel_plan(
        student_logits, teacher_logits, view, chunk_method, options.chunk_size, max(v_s, v_t)
    )
    if plan is None:
        return {}, 0
    s_idx, t_idx, s_flat, t_flat = plan.s_idx, plan.t_idx, plan.s_flat, plan.t_flat
    device = student_logits.device
    want = torch.is_grad_enabled() and student_logits.requires_grad
    cs, ct, us, ut = sets.common_s, sets.common_t, sets.uncommon_s, sets.uncommon_t
    factor = options.factor
    w_common, w_uncommon = sets.w_common, sets.w_uncommon
    wc, wu = w_common * factor, w_uncommon * factor

    def compute() -> tuple[tuple[Tensor, ...], int, list[Tensor | None]]:
        g_s = row_grad_buffer(s_flat, s_idx) if want else None
        buf_s = torch.empty(plan.most_rows(s_idx) * v_s, dtype=torch.float32, device=device)
        buf_t = torch.empty(plan.most_rows(t_idx) * v_t, dtype=torch.float32, device=device)
        acc = torch.zeros(4, dtype=torch.float32, device=device)  # div, l1, mass_u_s, mass_c_t
        for start, end in plan.slices:
            sel_s = s_idx.pred_row[slice(*s_idx.span(start, end))]
            sel_t = t_idx.pred_row[slice(*t_idx.span(start, end))]
            ys = _log_softmax_rows(s_flat, sel_s, temperature, buf_s)  # (P_s, V_S)
            lq_s, log_norm = _chunk_log_probs(ys, s_idx, start, end, chunk_method)  # (m, V_S)
            yt = _log_softmax_rows(t_flat, sel_t, temperature, buf_t)
            lq_t, _ = _chunk_log_probs(yt, t_idx, start, end, chunk_method)  # (m, V_T)
            m = end - start
            blocks = _column_blocks(m, cs.numel(), device)

            # Common term: sum_j pt_j (lq_T[t_j] - lq_S[s_j]), block by block over the pairs.
            pt_rows = lq_s.new_zeros(m)  # (m,) teacher mass on the pairs, per chunk
            for j in blocks:
                lt = lq_t.index_select(1, ct[j : j + blocks.step])  # (m, b)
                pt = lt.exp()
                acc[0] += (pt * lt.sub_(lq_s.index_select(1, cs[j : j + blocks.step]))).sum()
                pt_rows += pt.sum(-1)
            acc[3] += pt_rows.sum()
            # Uncommon term: the two sub-vectors ULD sorts; TRL skips it when a side is empty.
            ps_u = lq_s.index_select(1, us).exp_()  # (m, |U_S|)
            sgn = None
            if us.numel() and ut.numel():
                pt_u = lq_t.index_select(1, ut).exp_()  # (m, |U_T|)
                l1, sgn = sorted_l1_and_sign(ps_u, pt_u, truncate, want)
                acc[1] += l1.sum()
                del pt_u
            acc[2] += ps_u.sum()
            if g_s is None:
                continue
            # dL/dlq_S: -wc pt on the pairs, wu sgn ps on U_S; G its row sum.
            g_u = sgn.mul_(ps_u).mul_(wu) if sgn is not None else ps_u.zero_()  # (m, |U_S|)
            big = g_u.sum(-1) - wc * pt_rows  # (m,) G
            pairs = _Pairs(lq_t, cs, ct, blocks)
            _student_grad(ys, lq_s, log_norm, s_idx, start, end, chunk_method, big, g_u, us,
                          wc, pairs)  # fmt: skip
            if temperature != 1.0:
                ys.div_(temperature)
            g_s.index_copy_(0, sel_s, ys if g_s.dtype == ys.dtype else ys.to(g_s.dtype))
        div, l1 = acc[0] * factor, acc[1] * factor
        sums = (div, l1, w_common * div + w_uncommon * l1, acc[2].clone(), acc[3].clone())
        return sums, 2, [g_s.view_as(student_logits) if g_s is not None else None]

    out = with_precomputed_grads(compute, student_logits) if want else compute()[0]
    return dict(zip(HYBRID_KEYS, out, strict=True)), s_idx.num_chunks


def _student_grad(
    ys: Tensor,
    lq_s: Tensor,
    log_norm: Tensor | None,
    index: ChunkIndex,
    start: int,
    end: int,
    method: ChunkMethod,
    big: Tensor,
    g_u: Tensor,
    us: Tensor,
    wc: float,
    pairs: _Pairs,
) -> None:
    """Turn the rows' log-softmax ``ys`` (P, V_S) into dL/d(z / T) in place (module docstring).

    ``big`` (m,) = G, ``g_u`` (m, |U_S|) = g on U_S; g on the pairs is -wc pt (``pairs``).
    ``lq_s`` (the chunk block, multi-token chunks only) is overwritten."""
    m = end - start
    if ys.shape[0] == m:  # one token per chunk: g - p G, built in place over p
        ys.exp_().mul_(-big[:, None])
        for s_cols, pt in pairs:
            ys.index_add_(1, s_cols, pt.mul_(-wc))
        ys.index_add_(1, us, g_u)
        return
    lo = int(index.offsets[start])
    rows = index.local_rows(start, end)  # (P,)
    step = max(1, block_elems(ys.device) // ys.shape[1])
    if method == "mean":  # h = (g / q - G) / sum S into the chunk block, q = exp(lq_S)
        assert log_norm is not None
        for s_cols, pt in pairs:
            lq_s.index_copy_(1, s_cols, pt.div_(lq_s.index_select(1, s_cols).exp_()).mul_(-wc))
        lq_s.index_copy_(1, us, g_u.div_(lq_s.index_select(1, us).exp_()))
        h = lq_s.sub_(big[:, None]).div_(log_norm.exp())
        ys.exp_()
        for i in range(0, ys.shape[0], step):  # p_k * h - p_k <p_k, h>
            p = ys[i : i + step]
            ph = p * h[rows[i : i + step]]
            p.mul_(-ph.sum(-1, keepdim=True)).add_(ph)
        return
    # logmean and chain: g itself into the chunk block, then each row's share.
    for s_cols, pt in pairs:
        lq_s.index_copy_(1, s_cols, pt.mul_(-wc))
    lq_s.index_copy_(1, us, g_u)
    if method == "logmean":
        counts = index.counts(start, end).to(ys.dtype)
        lq_s.div_(counts[:, None])
        ys.exp_().mul_(-(big / counts)[rows, None])
        for i in range(0, ys.shape[0], step):
            ys[i : i + step].add_(lq_s[rows[i : i + step]])
        return
    # chain: the last row gets g - p G, each prefix row G (onehot(y_k) - p_k)
    last = index.is_last[lo : lo + ys.shape[0]]
    ys.exp_().mul_(-big[rows, None])
    ys.index_add_(0, torch.nonzero(last).squeeze(1), lq_s)
    pre = torch.nonzero(~last).squeeze(1)
    ys.index_put_((pre, index.token[lo + pre]), big[rows[pre]], accumulate=True)
