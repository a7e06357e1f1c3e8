"""P-KL on a column set S without any full-vocabulary intermediate beyond one pass per side.

Same value and gradients as ``pkl_loss``'s generic path (``cross_tokenizer_sums`` +
``projected_kl_terms``, "mean" student chunks, one column set S for the micro-batch, forward KL),
computed from what the formula actually reads. With ``a_k = logsumexp(z_k / T)`` over the student
vocabulary and U the student ids having a W entry in S:

    P_c[u] = (1/n_c) sum_{k in c} exp(z_k[u] / T - a_k)              (n, |U|)  student chunk mass
    q_c[j] = sum_{(s, i): idx[s, i] = S_j} P_c[s] W[s, i]            (n, |S|)  q = W^T p_S on S
    Q_c = sum_j q_c[j],  r_cj = q_c[j] / max(Q_c, tiny)
    KL_c   = T^2 sum_j pt_j (log pt_j - log max(r_cj, Q_FLOOR))

Two teacher sides (both from the teacher's logits y, no gradient):
  ``xbench``: S = the top-k *reachable* ids (``reach``) by micro-batch chunk mass, and
      pt = p_T[S] / sum p_T[S] with p_T the chunk mean of softmax(y_k / T) (full vocabulary);
  ``teacher_log_means`` (the authors'): S given, log pt_j = mean_{k in c} log_softmax_S(y_k / T)_j
      (softmax within S, averaged as log-probabilities, not renormalised).

Each side's logits are read in one pass: the teacher's (``xbench``) in blocks of a few rows that
yield both its log-partitions and the micro-batch column mass (:func:`teacher_lse_and_topk`); the
student's slice by slice into one reused float32 block (exp, row sums, the |U| columns; later, in
place, the rows' gradient). At Llama-3 x Qwen3 with |S| = 8192, |U| is ~8k of 128k student
columns and ~8k W entries land in S. No (rows, V_T) tensor is ever built; the one full-size
tensor is the student-logit gradient itself.

Gradients are closed-form and computed slice by slice during the forward (like
``chunks.cross_tokenizer_sums``), then scaled by the incoming gradient in backward. With
ok_j = [r_cj >= Q_FLOOR] (the floor passes no gradient) and [Q_c >= tiny] likewise:

    g_q[c, j] = T^2 ([Q_c >= tiny] (sum_{l ok} pt_l) / Q_c - ok_j pt_j / q_j)
    dL/dW[s, i] = sum_c P_c[s] g_q[c, slot(s, i)]                   only entries landing in S
    dL/dz_k[v] = (1/T) (g_e[k, v] e_k[v] [v in U] - G_k softmax(z_k / T)[v]),
        e_k = exp(z_k[U] / T - a_k),  g_e[k] = g_P[c(k)] / n_c,  G_k = sum_u g_e[k, u] e_k[u].

The term G_k softmax(z_k) is the only full-width gradient work. For a one-token chunk
G_c = sum_j q_j g_q[c, j] = T^2 ([Q_c >= tiny] - 1) sum_{l ok} pt_l: the floor acts on the
renormalised r (scale-free in q), so KL_c does not depend on a_k and G_c is exactly 0 whenever
Q_c >= tiny (rounding noise in the generic path).

Zero-weight slots of W are padding (``LearnableProjection`` masks them): they carry no mass and
receive no gradient here (the generic path gives them one, which the mask then discards).
The student-logit gradient has the logits' dtype (bf16 under autocast), rounded once from float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from xbench.losses.chunks import with_precomputed_grads
from xbench.losses.ops import block_elems, kernel_plan, row_grad_buffer, scaled_rows_into
from xbench.losses.view import ChunkIndex, ChunkOptions, ChunkView

__all__ = [
    "Q_FLOOR",
    "ColumnProjection",
    "projected_kl_sums",
    "restrict_columns",
    "teacher_lse_and_topk",
]

# Floor of the renormalised projected mass q|_S inside the log. Columns that no W row reaches are
# removed from S before (see ``pkl.reachable_columns``), so the floor only meets reachable columns
# whose projected mass underflowed; at 1e-10 (log = -23) one such column adds at most
# p_T * 23 instead of float32 tiny's p_T * 87. The authors' code adds it instead (``authors``):
# log(q / (Q + eps) + eps), eps = 1e-10, which differs from the floor only where r < 2e-10.
Q_FLOOR = 1.0e-10


@dataclass(frozen=True)
class ColumnProjection:
    """The entries of a sparse W (V_S, K) that land in a column set S, with nonzero weight.

    Attributes:
        s_ids: (E,) long, student row of each entry (non-decreasing).
        k_ids: (E,) long, slot of the entry in its row.
        slot: (E,) long, position of the entry's teacher id in S.
        u_ids: (U,) long, sorted distinct student ids among ``s_ids``.
        entry_u: (E,) long, position of each entry's student id in ``u_ids``.
    """

    s_ids: Tensor
    k_ids: Tensor
    slot: Tensor
    u_ids: Tensor
    entry_u: Tensor


def restrict_columns(
    w_indices: Tensor, w_weights: Tensor, columns: Tensor, v_t: int
) -> ColumnProjection:
    """Select the nonzero entries of W whose teacher id is in ``columns``.

    Args:
        w_indices: (V_S, K) long teacher ids; w_weights: (V_S, K) values (0 = padding slot).
        columns: (k,) distinct teacher ids (the column set S, any order).
        v_t: teacher vocabulary (head) width.
    """
    pos = torch.full((v_t,), -1, dtype=torch.long, device=w_indices.device)
    pos[columns] = torch.arange(columns.numel(), device=w_indices.device)
    slot = pos[w_indices]  # (V_S, K) position in S or -1
    s_ids, k_ids = torch.nonzero((slot >= 0) & (w_weights.detach() != 0), as_tuple=True)
    u_ids, entry_u = torch.unique_consecutive(s_ids, return_inverse=True)  # row-major: sorted
    return ColumnProjection(s_ids, k_ids, slot[s_ids, k_ids], u_ids, entry_u)


def teacher_lse_and_topk(
    t_flat: Tensor,
    t_idx: ChunkIndex,
    top_k: int,
    temperature: float = 1.0,
    allowed: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One pass over the teacher logits: every row's log-partition and the micro-batch top-k.

    The columns are those of ``pkl.teacher_topk_columns`` ("mean" chunks): the ``top_k`` ids of
    ``allowed`` with the largest sum over valid chunks c of mean_{k in c} softmax(y_k / T), sorted.
    Both come from the same exp(y - max) block, so the teacher's V_T-wide exponentials are taken
    once.

    Args:
        t_flat: (N, V_T) teacher logits (no grad), any float dtype.
        t_idx: the teacher side's :class:`ChunkIndex`.
        top_k: number of columns; ``>=`` the size of ``allowed`` returns all of ``allowed``.
        allowed: (R,) sorted candidate ids (P-KL: the reachable ones); None = every column.

    Returns:
        (lse (N,) float32 logsumexp(y_r / T) of every row, columns (min(top_k, R),) sorted long,
        mass (V_T,) float32 the summed chunk probability of every column).
    """
    n_rows, v_t = t_flat.shape
    if allowed is None:
        allowed = torch.arange(v_t, device=t_flat.device)
    # Row r's weight in the column mass: 1 / (tokens in its chunk); rows outside valid chunks 0.
    counts = (t_idx.offsets[1:] - t_idx.offsets[:-1]).float()
    row_w = torch.zeros(n_rows, dtype=torch.float32, device=t_flat.device)
    row_w[t_idx.pred_row] = 1.0 / counts[t_idx.chunk_row]
    mass = torch.zeros(v_t, dtype=torch.float32, device=t_flat.device)
    lse = torch.empty(n_rows, dtype=torch.float32, device=t_flat.device)
    step = max(1, block_elems(t_flat.device) // max(1, v_t))
    for i in range(0, n_rows, step):
        y = t_flat[i : i + step].float()  # (b, V_T); a view when float32
        y = y / temperature if temperature != 1.0 else y
        top = y.amax(-1, keepdim=True)
        e = torch.exp(y - top)  # (b, V_T), a small reused block
        total = e.sum(-1)
        lse[i : i + step] = top.squeeze(1) + total.log()
        mass.addmv_(e.t(), row_w[i : i + step] / total)
    if top_k >= allowed.numel():
        return lse, allowed, mass
    cols = torch.sort(allowed[mass[allowed].topk(top_k).indices]).values
    return lse, cols, mass


def _chunk_mean(x: Tensor, index: ChunkIndex, start: int, end: int) -> Tensor:
    """(end - start, ...) per-chunk mean of the token rows ``x`` of chunks ``start..end-1``."""
    lo, hi = int(index.offsets[start]), int(index.offsets[end])
    if hi - lo == end - start:
        return x
    rows = index.local_rows(start, end)
    counts = index.counts(start, end).to(x.dtype)
    return x.new_zeros(end - start, *x.shape[1:]).index_add_(0, rows, x).div_(counts[:, None])


_KEYS = (
    "loss",
    "kl",
    "proj_mass_in_topk",
    "teacher_mass_in_topk",
    "top1_agree",
    "teacher_mass_unreachable",
)


def projected_kl_sums(
    student_logits: Tensor,
    teacher_logits: Tensor,
    view: ChunkView,
    projection: tuple[Tensor, Tensor],
    *,
    columns: Tensor | None = None,
    reach: Tensor | None = None,
    teacher_log_means: bool = False,
    additive_floor: bool = False,
    options: ChunkOptions = ChunkOptions(),
) -> tuple[dict[str, Tensor], int]:
    """P-KL sums over valid chunks on the column set S ("mean" chunks); see the module docstring.

    Args:
        student_logits: (B, Ts, V_S), may require grad; teacher_logits: (B, Tt, V_T), no grad.
        view: the batch's chunks (``chunk_method`` is always ``mean`` here).
        projection: W as ``(indices (V_S, K) long, weights (V_S, K) float)``; the weights may
            require grad.
        columns: (k,) distinct teacher ids to use as S instead of the top-k.
        reach: (R,) sorted teacher ids S may hold (``pkl.reachable_columns``); None = every id.
            The teacher chunk mass on the other ids is summed as ``teacher_mass_unreachable``.
        teacher_log_means: the authors' teacher side (needs ``columns``): log pt = the chunk mean
            of the per-token log_softmax within S, not renormalised; no full-width teacher pass.
        additive_floor: the authors' epsilon instead of the floor :data:`Q_FLOOR`: r = q / (Q +
            eps), log(r + eps), eps = Q_FLOOR; gradient g_q[c, j] = T^2 (sum_l h_l r_l - h_j) /
            (Q + eps), h_j = pt_j / (r_j + eps) (every column passes gradient).
        options: reads ``top_k`` (S = the micro-batch teacher top-k among ``reach``,
            :func:`teacher_lse_and_topk`; ``>=`` the size of ``reach``: all of it),
            ``temperature`` (the loss carries T^2) and ``chunk_size`` (max predicting rows per
            side in one slice; on CPU the kernel also caps a slice at about 4M student logits, so
            its (rows, V_S) float32 block stays ~16 MiB).

    Returns:
        ``(sums, n_chunks)`` with the keys of ``projected_kl_terms`` (loss, kl, top1_agree,
        proj_mass_in_topk, teacher_mass_in_topk, teacher_mass_unreachable), summed; empty dict
        when no chunk is valid.
    """
    if teacher_log_means and columns is None:
        raise ValueError("teacher_log_means needs the column set S (columns=)")
    w_indices, w_weights = projection
    top_k, temperature, q_floor = options.top_k, options.temperature, Q_FLOOR
    v_s, v_t = student_logits.shape[-1], teacher_logits.shape[-1]
    plan = kernel_plan(student_logits, teacher_logits, view, "mean", options.chunk_size, v_s)
    if plan is None:
        return {}, 0
    s_idx, t_idx, s_flat, t_flat = plan.s_idx, plan.t_idx, plan.s_flat, plan.t_flat
    device = student_logits.device
    grad_on = torch.is_grad_enabled()
    want_s = grad_on and student_logits.requires_grad
    want_w = grad_on and w_weights.requires_grad
    t2 = temperature**2
    tiny = torch.finfo(torch.float32).tiny

    def compute() -> tuple[tuple[Tensor, ...], int, list[Tensor | None]]:
        unreach_mass = torch.zeros((), dtype=torch.float32, device=device)
        if teacher_log_means:
            assert columns is not None
            cols, a_t = columns, None
        else:
            a_t, top, mass = teacher_lse_and_topk(
                t_flat, t_idx, v_t if columns is not None else top_k, temperature, reach
            )
            cols = columns if columns is not None else top
            a_t = a_t[t_idx.pred_row]  # (P_t,)
            if reach is not None:  # teacher mass S can never hold (W maps no student there)
                unreach_mass = mass.sum() - mass[reach].sum()
        cp = restrict_columns(w_indices, w_weights, cols, v_t)
        w_e = w_weights.detach()[cp.s_ids, cp.k_ids].float()  # (E,)
        g_s = row_grad_buffer(s_flat, s_idx) if want_s else None
        g_we = torch.zeros_like(w_e) if want_w else None
        # A chunk longer than the slice cap forms its own slice.
        buf = torch.empty(plan.most_rows(s_idx) * v_s, dtype=torch.float32, device=device)
        acc = torch.zeros(len(_KEYS) - 1, dtype=torch.float32, device=device)
        for start, end in plan.slices:
            m = end - start
            lo, hi = int(s_idx.offsets[start]), int(s_idx.offsets[end])
            rs = s_idx.pred_row[lo:hi]
            # Student: exp(z/T - max) into a reused block; its row sums give the log-partition,
            # its U columns the probabilities P reads, and later the dense gradient term.
            y = scaled_rows_into(s_flat, rs, temperature, buf)
            y.sub_(y.amax(-1, keepdim=True)).exp_()
            inv_sum = 1.0 / y.sum(-1, keepdim=True)  # (P, 1)
            e = y.index_select(1, cp.u_ids).mul_(inv_sum)  # (P, U) student probs on U
            p_u = _chunk_mean(e, s_idx, start, end)  # (m, U)
            pu_t = p_u.t().contiguous()  # (U, m): entry rows contiguous for index_add
            src = pu_t[cp.entry_u] * w_e[:, None]  # (E, m)
            q = p_u.new_zeros(cols.numel(), m).index_add_(0, cp.slot, src).t()  # (m, k)
            tlo, thi = int(t_idx.offsets[start]), int(t_idx.offsets[end])
            rt = t_idx.pred_row[tlo:thi]
            lt = t_flat[rt[:, None], cols[None, :]].float()  # (P_t, k)
            lt = lt / temperature if temperature != 1.0 else lt
            if a_t is None:  # authors: log_softmax within S per token, chunk mean of log-probs
                log_pt = _chunk_mean(lt - torch.logsumexp(lt, -1, keepdim=True), t_idx, start, end)
                lt = log_pt
                lse_t = torch.logsumexp(log_pt, dim=-1, keepdim=True)  # (m, 1), not 1
            else:
                lt = lt - a_t[tlo:thi, None]
                if thi - tlo != m:  # multi-token chunks: log of the mean of the rows' probabilities
                    lt = torch.log(_chunk_mean(lt.exp(), t_idx, start, end).clamp_min(tiny))
                lse_t = torch.logsumexp(lt, dim=-1, keepdim=True)  # (m, 1)
                log_pt = lt - lse_t
            pt = log_pt.exp()
            q_mass = q.sum(-1, keepdim=True)  # (m, 1)
            ok_mass = q_mass >= tiny
            if additive_floor:  # the authors': log(q / (Q + eps) + eps)
                denom = q_mass + q_floor
                r = q / denom
                kl = (pt * (log_pt - (r + q_floor).log())).sum() * t2
            else:
                r = q / q_mass.clamp_min(tiny)
                ok_q = r >= q_floor  # where the floor is not active (it passes no gradient)
                kl = (pt * (log_pt - r.clamp_min(q_floor).log())).sum() * t2
            acc += torch.stack([kl, kl, q_mass.sum(), lse_t.exp().sum(),
                                (q.argmax(-1) == lt.argmax(-1)).sum().float()])  # fmt: skip
            if not (want_s or want_w):
                continue
            if additive_floor:
                h = pt / (r + q_floor)  # (m, k)
                hr = (h * r).sum(-1, keepdim=True)  # (m, 1)
                g_q = t2 * (hr - h) / denom
            else:
                pt_ok = (pt * ok_q).sum(-1, keepdim=True)  # (m, 1)
                g_q = t2 * (
                    torch.where(ok_mass, pt_ok / q_mass, 0.0) - torch.where(ok_q, pt / q, 0.0)
                )  # fmt: skip  (m, k)
            gq_e = g_q.t().contiguous()[cp.slot]  # (E, m)
            if g_we is not None:
                g_we += (pu_t[cp.entry_u] * gq_e).sum(1)
            if g_s is None:
                continue
            g_pu = p_u.new_zeros(cp.u_ids.numel(), m).index_add_(0, cp.entry_u, gq_e * w_e[:, None])
            g_e = _chunk_grad(g_pu.t(), s_idx, start, end) * e  # (P, U) = g_e * e_k
            if hi - lo == m and additive_floor:  # G = sum_j q_j g_q[j] = -T^2 eps hr / (Q + eps)
                big = -t2 * q_floor * hr / denom
            elif hi - lo == m:  # one token per chunk: G = sum_j q_j g_q[j], 0 unless Q < tiny
                big = t2 * (torch.where(ok_mass, pt_ok, 0.0) - pt_ok)
            else:
                big = g_e.sum(-1, keepdim=True)  # (P, 1)
            # Row gradient (1/T) (g_e on U - G softmax), with softmax = y * inv_sum, in place.
            y.mul_(big.mul_(inv_sum).div_(-temperature))
            y.index_add_(1, cp.u_ids, g_e.div_(temperature))
            g_s.index_copy_(0, rs, y if g_s.dtype == y.dtype else y.to(g_s.dtype))
        g_w = None
        if g_we is not None:
            g_w = torch.zeros(w_weights.shape, dtype=torch.float32, device=device)
            g_w.index_put_((cp.s_ids, cp.k_ids), g_we, accumulate=True)
            g_w = g_w.to(w_weights.dtype)
        sums = (*(acc[i].clone() for i in range(acc.numel())), unreach_mass)
        return sums, 0, [g_s.view_as(student_logits) if g_s is not None else None, g_w]

    if want_s or want_w:
        out = with_precomputed_grads(compute, student_logits, w_weights)
    else:
        out = compute()[0]
    return dict(zip(_KEYS, out, strict=True)), s_idx.num_chunks


def _chunk_grad(g_chunk: Tensor, index: ChunkIndex, start: int, end: int) -> Tensor:
    """(P, ...) gradient of each token row from the gradient of its chunk's mean (adjoint of
    :func:`_chunk_mean`)."""
    lo, hi = int(index.offsets[start]), int(index.offsets[end])
    if hi - lo == end - start:
        return g_chunk
    rows = index.local_rows(start, end)
    counts = index.counts(start, end).to(g_chunk.dtype)
    return (g_chunk / counts[:, None])[rows]
