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

from xbench.losses.chunks import (
    ChunkIndex,
    ChunkMethod,
    build_chunk_index,
    token_slices,
    with_precomputed_grads,
)
from xbench.losses.projection_ops import block_elems, row_grad_buffer
from xbench.losses.uld import sorted_l1_and_sign

__all__ = ["HYBRID_KEYS", "hybrid_sums"]

HYBRID_KEYS = ("kl_common", "l1_uncommon", "loss", "student_mass_uncommon", "teacher_mass_common")


def _log_softmax_rows(flat: Tensor, sel: Tensor, temperature: float, buf: Tensor) -> Tensor:
    """(P, V) float32 log_softmax(flat[sel] / T) written into the reused block ``buf``."""
    v = flat.shape[1]
    y = buf[: sel.numel() * v].view(sel.numel(), v)
    if flat.dtype == y.dtype:
        torch.index_select(flat, 0, sel, out=y)
    else:  # bf16 logits: gather, then widen into the float32 block
        y.copy_(flat.index_select(0, sel))
    if temperature != 1.0:
        y.div_(temperature)
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
    rows = index.chunk_row[lo : lo + y.shape[0]] - start  # (P,)
    if method == "mean":
        c = y.new_zeros(n, y.shape[1])
        step = max(1, block_elems(y.device) // y.shape[1])
        for i in range(0, y.shape[0], step):
            c.index_add_(0, rows[i : i + step], y[i : i + step].exp())
        log_norm = c.sum(-1, keepdim=True).log()  # (n, 1)
        return c.clamp_min_(torch.finfo(c.dtype).tiny).log_().sub_(log_norm), log_norm
    if method == "logmean":
        counts = (index.offsets[start + 1 : end + 1] - index.offsets[start:end]).to(y.dtype)
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
    student_chunk: Tensor,
    teacher_chunk: Tensor,
    chunk_mask: Tensor,
    common_s: Tensor,
    common_t: Tensor,
    uncommon_s: Tensor,
    uncommon_t: Tensor,
    *,
    w_common: float,
    w_uncommon: float,
    truncate: int | None = None,
    factor: float = 1.0,
    chunk_method: ChunkMethod = "mean",
    temperature: float = 1.0,
    student_ids: Tensor | None = None,
    teacher_ids: Tensor | None = None,
    chunk_size: int | None = 256,
) -> tuple[dict[str, Tensor], int]:
    """Sums of :func:`xbench.losses.gold.hybrid_terms` (beta = 0) over the valid chunks; see the
    module docstring. ULD is the case of no pairs with ``w_uncommon = 1``.

    Args:
        student_logits: (B, Ts, V_S), may require grad; teacher_logits: (B, Tt, V_T), no grad.
        student_chunk, teacher_chunk, chunk_mask: PairAlignment fields.
        common_s, common_t: (M,) long pairs; uncommon_s, uncommon_t: their complements (sorted).
        w_common, w_uncommon: term weights; truncate: ULD over the top ranks only; factor: both
            terms times it (T^2 under the authors' convention).
        chunk_method, temperature, student_ids, teacher_ids: chunk distributions.
        chunk_size: max predicting rows per side in one slice; on CPU also capped so that a
            side's (rows, V) float32 block stays ~16 MiB.

    Returns:
        ``(sums, n_chunks)`` with :data:`HYBRID_KEYS`; empty dict when no chunk is valid.
    """
    if teacher_logits.requires_grad and torch.is_grad_enabled():
        raise ValueError("hybrid_sums differentiates the student only; use the generic path")
    if chunk_method == "chain" and (student_ids is None or teacher_ids is None):
        raise ValueError("chunk_method='chain' needs student_ids and teacher_ids")
    s_idx = build_chunk_index(student_chunk, chunk_mask, student_ids)
    t_idx = build_chunk_index(teacher_chunk, chunk_mask, teacher_ids)
    n = s_idx.num_chunks
    if n == 0:
        return {}, 0
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    device = student_logits.device
    s_flat = student_logits.detach().reshape(-1, v_s)  # (B*Ts, V_S)
    t_flat = teacher_logits.detach().reshape(-1, v_t)  # (B*Tt, V_T)
    want = torch.is_grad_enabled() and student_logits.requires_grad
    rows_cap = max(1, 4 * block_elems(device) // max(v_s, v_t))
    max_rows = rows_cap if not chunk_size or chunk_size <= 0 else min(chunk_size, rows_cap)
    cs, ct, us, ut = common_s.long(), common_t.long(), uncommon_s.long(), uncommon_t.long()
    wc, wu = w_common * factor, w_uncommon * factor

    def compute() -> tuple[tuple[Tensor, ...], int, list[Tensor | None]]:
        g_s = row_grad_buffer(s_flat, s_idx) if want else None
        slices = token_slices(s_idx, t_idx, max_rows)
        most_s = max(int(s_idx.offsets[e] - s_idx.offsets[b]) for b, e in slices)
        most_t = max(int(t_idx.offsets[e] - t_idx.offsets[b]) for b, e in slices)
        buf_s = torch.empty(most_s * v_s, dtype=torch.float32, device=device)
        buf_t = torch.empty(most_t * v_t, dtype=torch.float32, device=device)
        acc = torch.zeros(4, dtype=torch.float32, device=device)  # div, l1, mass_u_s, mass_c_t
        for start, end in slices:
            sel_s = s_idx.pred_row[int(s_idx.offsets[start]) : int(s_idx.offsets[end])]
            sel_t = t_idx.pred_row[int(t_idx.offsets[start]) : int(t_idx.offsets[end])]
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
    return dict(zip(HYBRID_KEYS, out, strict=True)), n


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
    rows = index.chunk_row[lo : lo + ys.shape[0]] - start  # (P,)
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
        counts = (index.offsets[start + 1 : end + 1] - index.offsets[start:end]).to(ys.dtype)
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
