"""P-KL: chunk-level forward KL between the teacher and the student projected through sparse W."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xbench.losses.base import LossOutput, register
from xbench.losses.chunks import (
    ChunkMethod,
    build_chunk_index,
    cross_tokenizer_sums,
    rows_log_probs,
    token_slices,
)
from xbench.losses.projection_ops import projected_kl_sums

__all__ = [
    "LearnableProjection",
    "pkl_loss",
    "project",
    "projected_kl_terms",
    "teacher_topk_columns",
]

TopKScope = Literal["microbatch", "chunk"]


class LearnableProjection(nn.Module):
    """W with a fixed sparsity pattern and learnable positive values.

    Parameterization: W[s, k] = m[s, k] softplus(r[s, k]) / sum_k' m[s, k'] softplus(r[s, k']),
    m = (initial weight > 0). Rows stay on the simplex, padding slots (m = 0) stay exactly 0, empty
    rows stay empty (0/0 guarded to 0), and r is initialized to softplus^{-1}(w0) so the module
    starts at W0 exactly. The trainer should give ``raw`` its own parameter group
    (:meth:`param_groups`: lr 1e-2, no weight decay, no gradient clipping -- the paper's setting).

    Attributes:
        indices: (V_S, K) long buffer of teacher ids.
        raw: (V_S, K) parameter r.
    """

    def __init__(self, indices: Tensor, weights: Tensor) -> None:
        super().__init__()
        self.register_buffer("indices", indices.long().clone())
        self.register_buffer("mask", weights > 0)
        w0 = weights.float().clamp_min(1e-6)
        self.raw = nn.Parameter(torch.where(w0 > 20, w0, torch.log(torch.expm1(w0))))

    def weights(self) -> Tensor:
        """(V_S, K) current W values, rows summing to 1 (or 0 for empty rows)."""
        pos = F.softplus(self.raw) * self.mask
        return pos / pos.sum(1, keepdim=True).clamp_min(1e-12)

    def param_groups(self, lr: float = 1e-2) -> list[dict[str, Any]]:
        """Optimizer group hint: W's values get their own lr and no gradient clipping."""
        return [{"params": [self.raw], "lr": lr, "weight_decay": 0.0, "name": "projection",
                 "clip_grad": False}]  # fmt: skip


# Up to this many W entries (V_S x V_T) the projection uses a dense matmul (16M floats = 64 MB).
DENSE_LIMIT = 1 << 24


def project(
    p_s: Tensor, w_indices: Tensor, w_weights: Tensor, columns: Tensor | None, v_t: int
) -> Tensor:
    """q = W^T p_S on ``columns``: q[n, j] = sum_{s,k: idx[s,k] = columns[j]} p_S[n, s] W[s, k].

    Never builds V_S x V_T. With ``columns`` the (s, k) entries landing in those columns are
    selected once and added with one ``index_add`` of an (E, n) source (E = entries hit, about
    |columns| * nnz / V_T); without, K passes of an (V_S, n) ``index_add`` fill all V_T columns.
    Works in (V, n) layout because row-wise ``index_add`` is contiguous on CPU.

    Small vocabularies (V_S * V_T <= ``DENSE_LIMIT``, the miniature world) take a dense path
    instead: W is scattered into a (V_S, V_T) matrix (differentiable in ``w_weights``) and
    q = p_S @ W is one matmul. Same values; at real sizes (128k x 152k) W is never dense.

    Args:
        p_s: (n, V_S) student chunk probabilities.
        w_indices: (V_S, K) long; w_weights: (V_S, K) float (may require grad).
        columns: (k,) teacher ids, or None for all ``v_t`` columns.
        v_t: teacher vocabulary (head) width.

    Returns:
        (n, k) or (n, V_T) projected mass.
    """
    w_weights = w_weights.to(p_s.dtype)  # the projection runs in the probabilities' dtype
    if w_indices.shape[0] * v_t <= DENSE_LIMIT:
        dense = p_s.new_zeros(w_indices.shape[0], v_t).scatter_add(
            1, w_indices, w_weights
        )  # (V_S, V_T), duplicates summed like index_add
        if columns is not None:
            dense = dense[:, columns]  # (V_S, k)
        return p_s @ dense
    ps_t = p_s.t()  # (V_S, n)
    if columns is None:
        q_t = p_s.new_zeros(v_t, p_s.shape[0])  # (V_T, n)
        for k in range(w_indices.shape[1]):
            q_t = q_t.index_add(0, w_indices[:, k], ps_t * w_weights[:, k : k + 1])
        return q_t.t()
    pos = torch.full((v_t,), -1, dtype=torch.long, device=p_s.device)
    pos[columns] = torch.arange(columns.numel(), device=p_s.device)
    slot = pos[w_indices]  # (V_S, K) position in columns or -1
    s_ids, k_ids = torch.nonzero(slot >= 0, as_tuple=True)  # E entries
    src = ps_t[s_ids] * w_weights[s_ids, k_ids][:, None]  # (E, n)
    q_t = p_s.new_zeros(columns.numel(), p_s.shape[0]).index_add(0, slot[s_ids, k_ids], src)
    return q_t.t()  # (n, k)


def projected_kl_terms(
    lq_s: Tensor,
    lq_t: Tensor,
    w_indices: Tensor,
    w_weights: Tensor,
    columns: Tensor | None,
    top_k: int,
    temperature: float,
) -> dict[str, Tensor]:
    """Per-slice sums of P-KL from chunk log-probabilities.

    With S the column set (``columns``, or the chunk's own teacher top-k when None):
        pt = p_T[S] / sum p_T[S],  qt = q[S] / sum q[S],  q = W^T p_S,
        KL_c = T^2 sum_{t in S} pt (log pt - log qt)   (forward KL(p_T || q) on S).
    log q is floored at the smallest normal float: a teacher column that no student token maps
    to has q = 0 (KL large but finite) and its floor carries no gradient.

    Returns:
        {"loss", "kl", "top1_agree", "proj_mass_in_topk", "teacher_mass_in_topk"}: sums.
    """
    v_t = lq_t.shape[1]
    p_s = lq_s.exp()  # (n, V_S)
    if columns is None and top_k < v_t:
        cols = lq_t.topk(top_k, dim=-1).indices  # (n, k) per-chunk teacher top-k
        q = project(p_s, w_indices, w_weights, None, v_t).gather(1, cols)
        lt = lq_t.gather(1, cols)
    else:
        q = project(p_s, w_indices, w_weights, columns, v_t)  # (n, k)
        lt = lq_t if columns is None else lq_t[:, columns]
    log_pt = lt - torch.logsumexp(lt, dim=-1, keepdim=True)
    q_mass = q.sum(-1, keepdim=True)  # (n, 1)
    log_qt = torch.log(q.clamp_min(torch.finfo(q.dtype).tiny)) - torch.log(
        q_mass.clamp_min(torch.finfo(q.dtype).tiny)
    )
    kl = (log_pt.exp() * (log_pt - log_qt)).sum() * temperature**2
    return {
        "loss": kl,
        "kl": kl.detach(),
        "top1_agree": (q.argmax(-1) == lt.argmax(-1)).sum().to(kl.dtype),
        "proj_mass_in_topk": (q_mass.squeeze(1) / p_s.sum(-1)).sum().detach(),
        "teacher_mass_in_topk": torch.logsumexp(lt, -1).exp().sum().detach(),
    }


def teacher_topk_columns(
    teacher_logits: Tensor,
    teacher_chunk: Tensor,
    chunk_mask: Tensor,
    top_k: int,
    *,
    chunk_method: ChunkMethod = "mean",
    temperature: float = 1.0,
    teacher_ids: Tensor | None = None,
    chunk_size: int | None = 256,
) -> Tensor | None:
    """The micro-batch's teacher top-k columns: the k teacher ids with the largest summed chunk
    probability over the micro-batch's valid chunks (sorted ids). None when k >= V_T."""
    v_t = teacher_logits.shape[-1]
    if top_k >= v_t:
        return None
    idx = build_chunk_index(teacher_chunk, chunk_mask, teacher_ids)
    flat = teacher_logits.reshape(-1, v_t)
    mass = teacher_logits.new_zeros(v_t, dtype=torch.float32)
    with torch.no_grad():
        for start, end in token_slices(idx, idx, chunk_size):
            lo, hi = int(idx.offsets[start]), int(idx.offsets[end])
            rows = flat[idx.pred_row[lo:hi]]
            if chunk_method == "mean":  # sum_c mean_k softmax(z_k): a weighted sum of rows
                z = rows.float() if temperature == 1.0 else rows.float() / temperature
                counts = (idx.offsets[start + 1 : end + 1] - idx.offsets[start:end]).float()
                wts = 1.0 / counts[idx.chunk_row[lo:hi] - start]  # (P,)
                mass += wts @ F.softmax(z, dim=-1)
            else:
                mass += (
                    rows_log_probs(rows, idx, start, end, chunk_method, temperature).exp_().sum(0)
                )
    return torch.sort(mass.topk(top_k).indices).values


@register("pkl")
def pkl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_chunk: Tensor,
    teacher_chunk: Tensor,
    chunk_mask: Tensor,
    w_indices: Tensor,
    w_weights: Tensor,
    *,
    top_k: int = 8192,
    top_k_scope: TopKScope = "microbatch",
    temperature: float = 1.0,
    chunk_method: ChunkMethod = "mean",
    student_ids: Tensor | None = None,
    teacher_ids: Tensor | None = None,
    chunk_size: int | None = 256,
    use_checkpoint: bool = True,
) -> LossOutput:
    """P-KL (X-Token), summed over valid chunks c:

        q_c = W^T p^S_c                                  (student mass moved to teacher tokens)
        L_c = T^2 * KL( p^T_c|_S || q_c|_S ),   both restricted to columns S and renormalized there

    p^S_c, p^T_c: chunk distributions at temperature T (:mod:`xbench.losses.chunks`); W: the sparse
    projection ((V_S, K) indices and weights, rows summing to 1; weights may require grad -- see
    :class:`LearnableProjection`). No partition into common/uncommon: every student token, e.g. a
    multi-digit numeral whose row spreads over digit tokens, gets an identity-aware gradient.

    Column set S ("teacher top-k, chosen per microbatch"), a recorded decision:
      ``top_k_scope="microbatch"`` (default): one S for the whole micro-batch, the k teacher ids
      with the largest summed chunk probability (:func:`teacher_topk_columns`); shared columns let
      the projection touch only the W entries landing in S.
      ``"chunk"``: each chunk's own teacher top-k (needs the full projected q per chunk; slower).
    ``top_k >= V_T`` uses every column.

    Args:
        student_logits: (B, Ts, V_S); teacher_logits: (B, Tt, V_T) (V_T = head width, W's V_T).
        student_chunk, teacher_chunk, chunk_mask: PairAlignment fields.
        w_indices: (V_S, K) long; w_weights: (V_S, K) float.
        top_k, top_k_scope: column restriction. temperature: T (result times T^2).
        chunk_method, student_ids, teacher_ids: chunk distributions.
        chunk_size: max predicting rows (tokens) per side in one slice; use_checkpoint: under
            autograd, differentiate slice by slice during the forward (False: one graph).

    Returns:
        LossOutput(total = sum over chunks, count = valid chunks, components = sums of kl,
        top1_agree (argmax q|_S == argmax p^T|_S), proj_mass_in_topk (share of the projected
        student mass inside S), teacher_mass_in_topk). >= 0; 0 when q|_S == p^T|_S.
    """
    if w_indices.shape[0] != student_logits.shape[-1]:
        raise ValueError(
            f"W has {w_indices.shape[0]} rows, student head {student_logits.shape[-1]}"
        )
    columns = None
    fast = top_k_scope == "microbatch" and chunk_method == "mean"  # projection_ops' kernel
    if top_k_scope == "microbatch" and not fast:
        columns = teacher_topk_columns(
            teacher_logits, teacher_chunk, chunk_mask, top_k, chunk_method=chunk_method,
            temperature=temperature, teacher_ids=teacher_ids, chunk_size=chunk_size,
        )  # fmt: skip
    elif top_k_scope not in ("chunk", "microbatch"):
        raise ValueError(f"top_k_scope={top_k_scope!r}: 'microbatch' or 'chunk'")
    idx = w_indices.long()

    def term(lq_s: Tensor, lq_t: Tensor, w: Tensor) -> dict[str, Tensor]:
        return projected_kl_terms(lq_s, lq_t, idx, w, columns, top_k, temperature)

    sums, n = projected_kl_sums(
        student_logits, teacher_logits, student_chunk, teacher_chunk, chunk_mask, idx, w_weights,
        top_k=top_k, temperature=temperature, chunk_size=chunk_size,
    ) if fast else cross_tokenizer_sums(
        student_logits, teacher_logits, student_chunk, teacher_chunk, chunk_mask, term,
        (w_weights,), chunk_method=chunk_method, temperature=temperature,
        student_ids=student_ids, teacher_ids=teacher_ids, chunk_size=chunk_size,
        use_checkpoint=use_checkpoint,
    )  # fmt: skip
    count = torch.tensor(n, device=student_logits.device)
    if not sums:
        zero = student_logits.sum() * 0.0 + w_weights.sum() * 0.0
        return LossOutput(zero, count, {"kl": zero.detach()})
    total = sums.pop("loss")
    return LossOutput(total, count, {k: v.detach() for k, v in sums.items()})
