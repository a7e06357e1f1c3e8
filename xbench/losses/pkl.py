"""P-KL: chunk-level forward KL between the teacher and the student projected through sparse W."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xbench.losses.base import LossOutput
from xbench.losses.chunks import cross_tokenizer_sums, rows_log_probs, token_slices
from xbench.losses.kd import divergence_terms
from xbench.losses.projection_ops import Q_FLOOR, projected_kl_sums
from xbench.losses.view import SHARED_READS, ChunkIndex, ChunkOptions, ChunkView

__all__ = [
    "PKL_READS",
    "LearnableProjection",
    "column_sets",
    "max_logit_columns",
    "pkl_loss",
    "project",
    "projected_kl_terms",
    "reachable_columns",
    "teacher_topk_columns",
]

# The ChunkOptions fields pkl reads.
PKL_READS = SHARED_READS | {"beta", "top_k", "top_k_scope", "authors"}


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


def reachable_columns(w_indices: Tensor, w_weights: Tensor, v_t: int) -> Tensor:
    """(R,) sorted teacher ids that some W row maps to with a positive weight.

    Why: a teacher column outside this set has q = W^T p_S = 0 for every student, whatever the
    student does; keeping it in S adds p_T (log p_T - log floor), a large constant with no
    gradient, which inflates KD and so shrinks the dynamic scale sg(|CE|/|KD|). W's sparsity
    pattern is fixed (learned values stay positive on it), so the set is fixed too.
    """
    hit = torch.zeros(v_t, dtype=torch.bool, device=w_indices.device)
    hit[w_indices[w_weights.detach() > 0]] = True
    return torch.nonzero(hit).squeeze(1)


def projected_kl_terms(
    lq_s: Tensor,
    lq_t: Tensor,
    w_indices: Tensor,
    w_weights: Tensor,
    columns: Tensor | None,
    top_k: int,
    temperature: float,
    beta: float = 0.0,
    reach: Tensor | None = None,
    unreach: Tensor | None = None,
    teacher_restricted: bool = False,
    v_t: int | None = None,
    additive_floor: bool = False,
) -> dict[str, Tensor]:
    """Per-slice sums of P-KL from chunk log-probabilities.

    With S the column set (``columns``; or, when None, each chunk's own teacher top-k among the
    ``reach`` columns; ``unreach`` = the other columns, only logged):
        pt = p_T[S] / sum p_T[S],  qt = q[S] / sum q[S],  q = W^T p_S,
        KL_c = T^2 sum_{t in S} pt (log pt - log max(qt, Q_FLOOR))   (forward KL(p_T || q) on S)
    ``beta`` > 0 replaces the forward KL by the generalized JSD_beta of
    :func:`xbench.losses.kd.divergence_terms` on (pt, qt) (beta = 1: reverse KL(qt || pt)).
    ``teacher_restricted``: ``lq_t`` is already (n, |columns|) and is used as log pt as it is
    (the authors' teacher side: per-token log-softmax within the columns, averaged over the
    chunk's tokens, not renormalised); ``v_t`` then gives the teacher width. ``additive_floor`` (the
    authors'): log qt = log(q / (sum q + Q_FLOOR) + Q_FLOOR) instead of log max(qt, Q_FLOOR).

    Returns:
        {"loss", "kl", "top1_agree", "proj_mass_in_topk", "teacher_mass_in_topk",
        "teacher_mass_unreachable"}: sums over the slice's chunks.
    """
    v_t = lq_t.shape[1] if v_t is None else v_t
    p_s = lq_s.exp()  # (n, V_S)
    if teacher_restricted:
        assert columns is not None
        q = project(p_s, w_indices, w_weights, columns, v_t)
        lt = lq_t
    elif columns is None:
        cand = reach if reach is not None else torch.arange(v_t, device=lq_t.device)
        if top_k < cand.numel():  # per-chunk teacher top-k among the candidate columns
            cols = cand[lq_t[:, cand].topk(top_k, dim=-1).indices]  # (n, k)
            q = project(p_s, w_indices, w_weights, None, v_t).gather(1, cols)
            lt = lq_t.gather(1, cols)
        else:
            q = project(p_s, w_indices, w_weights, cand, v_t)
            lt = lq_t[:, cand]
    else:
        q = project(p_s, w_indices, w_weights, columns, v_t)  # (n, k)
        lt = lq_t[:, columns]
    log_pt = lt if teacher_restricted else lt - torch.logsumexp(lt, dim=-1, keepdim=True)
    q_mass = q.sum(-1, keepdim=True)  # (n, 1)
    tiny = torch.finfo(q.dtype).tiny
    if additive_floor:
        log_qt = (q / (q_mass + Q_FLOOR) + Q_FLOOR).log()
    else:
        log_qt = (q / q_mass.clamp_min(tiny)).clamp_min(Q_FLOOR).log()
    if beta == 0.0:
        kl = (log_pt.exp() * (log_pt - log_qt)).sum() * temperature**2
    else:
        kl = divergence_terms(log_qt, log_pt, "jsd", beta).sum() * temperature**2
    t_unreach = (
        lq_t.detach()[:, unreach].exp().sum()
        if unreach is not None and unreach.numel() and not teacher_restricted
        else kl.new_zeros(())
    )
    return {
        "loss": kl,
        "kl": kl.detach(),
        "top1_agree": (q.argmax(-1) == lt.argmax(-1)).sum().to(kl.dtype),
        "proj_mass_in_topk": (q_mass.squeeze(1) / p_s.sum(-1)).sum().detach(),
        "teacher_mass_in_topk": torch.logsumexp(lt, -1).exp().sum().detach(),
        "teacher_mass_unreachable": t_unreach,
    }


def teacher_topk_columns(
    teacher_logits: Tensor,
    view: ChunkView,
    top_k: int,
    *,
    options: ChunkOptions = ChunkOptions(),
    allowed: Tensor | None = None,
) -> Tensor:
    """The micro-batch's teacher top-k columns: the k teacher ids with the largest summed chunk
    probability over the micro-batch's valid chunks (sorted ids), chosen among ``allowed``
    (sorted ids; default every column). All of ``allowed`` when k >= its size. Reads
    ``options.chunk_method``, ``temperature`` and ``chunk_size``."""
    v_t = teacher_logits.shape[-1]
    if allowed is None:
        allowed = torch.arange(v_t, device=teacher_logits.device)
    if top_k >= allowed.numel():
        return allowed
    method, temperature = options.chunk_method, options.temperature
    idx = view.teacher_index()
    flat = teacher_logits.reshape(-1, v_t)
    mass = teacher_logits.new_zeros(v_t, dtype=torch.float32)
    with torch.no_grad():
        for start, end in token_slices(idx, idx, options.chunk_size):
            lo, hi = idx.span(start, end)
            rows = flat[idx.pred_row[lo:hi]]
            if method == "mean":  # sum_c mean_k softmax(z_k): a weighted sum of rows
                z = rows.float() if temperature == 1.0 else rows.float() / temperature
                wts = 1.0 / idx.counts(start, end).float()[idx.local_rows(start, end)]  # (P,)
                mass += wts @ F.softmax(z, dim=-1)
            else:
                mass += rows_log_probs(rows, idx, start, end, method, temperature).exp_().sum(0)
    return torch.sort(allowed[mass[allowed].topk(top_k).indices]).values


def column_sets(
    teacher_logits: Tensor,
    view: ChunkView,
    projection: tuple[Tensor, Tensor],
    options: ChunkOptions,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """(columns, reach, unreach) of one micro-batch: its shared top-k columns among the reachable
    ones (None under ``top_k_scope="chunk"``), the reachable ids and the unreachable ids."""
    v_t = teacher_logits.shape[-1]
    reach = reachable_columns(projection[0], projection[1], v_t)
    keep = torch.ones(v_t, dtype=torch.bool, device=reach.device)
    keep[reach] = False
    unreach = torch.nonzero(keep).squeeze(1)
    if options.top_k_scope == "chunk":
        return None, reach, unreach
    if options.top_k_scope != "microbatch":
        raise ValueError(
            f"ChunkOptions.top_k_scope={options.top_k_scope!r} is unknown; use 'microbatch' or "
            "'chunk'."
        )
    columns = teacher_topk_columns(
        teacher_logits, view, options.top_k, options=options, allowed=reach
    )
    return columns, reach, unreach


def pkl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    view: ChunkView,
    projection: tuple[Tensor, Tensor],
    *,
    options: ChunkOptions = ChunkOptions(),
) -> LossOutput:
    """P-KL (X-Token), summed over valid chunks c:

        q_c = W^T p^S_c                                  (student mass moved to teacher tokens)
        L_c = T^2 * KL( p^T_c|_S || q_c|_S ),   both restricted to columns S and renormalized there

    p^S_c, p^T_c: chunk distributions at temperature T (:mod:`xbench.losses.chunks`); W: the sparse
    projection ((V_S, K) indices and weights, rows summing to 1; weights may require grad -- see
    :class:`LearnableProjection`). No partition into common/uncommon: every student token, e.g. a
    multi-digit numeral whose row spreads over digit tokens, gets an identity-aware gradient.

    Column set S ("teacher top-k, chosen per microbatch"), a recorded decision:
      ``options.top_k_scope="microbatch"`` (default): one S for the whole micro-batch, the k
      teacher ids with the largest summed chunk probability (:func:`teacher_topk_columns`);
      shared columns let the projection touch only the W entries landing in S.
      ``"chunk"``: each chunk's own teacher top-k (needs the full projected q per chunk; slower).
    S only holds *reachable* columns (some W row maps there; :func:`reachable_columns`): an
    unreachable column has q = 0 whatever the student does, a constant with no gradient that
    would only inflate KD. Their teacher mass is logged (``teacher_mass_unreachable``) and
    p_T is renormalised over S. ``top_k`` >= the number of reachable columns uses all of them.
    log qt is floored at :data:`Q_FLOOR` (1e-10).
    ``beta`` (kd.kl): 0 forward KL (the paper's), 1 reverse KL(q || p_T), else generalized JSD.

    ``options.authors`` (``kd.semantics=authors``, the NeMo RL code): S = the k teacher ids with the
    highest max-logit anywhere in the micro-batch (padding included, unreachable ids kept); the
    student side is as above (chunk mean of probabilities, projected, renormalised within S); the
    teacher side is log_softmax(z_T / T) within S per token, averaged over the chunk's tokens as
    log-probabilities and not renormalised; chunk_method and top_k_scope are then unused; the
    projected side is renormalised and logged as log(q / (Q + 1e-10) + 1e-10), their epsilon.

    Args:
        student_logits: (B, Ts, V_S); teacher_logits: (B, Tt, V_T) (V_T = head width, W's V_T).
        view: the batch's chunks (and ids, for ``chain``).
        projection: W as ``(indices (V_S, K) long, weights (V_S, K) float)``.
        options: reads ``top_k``, ``top_k_scope`` (column restriction), ``beta``, ``authors``,
            ``fast`` (the column-restricted kernel ``projection_ops.projected_kl_sums``, same
            value and gradients, where it applies: forward KL (``beta`` 0) with ``authors``, or
            with ``top_k_scope="microbatch"`` and ``chunk_method="mean"``; False forces the
            generic path, the kernel's reference in the tests), and the shared ``temperature``
            (result times T^2), ``chunk_method``, ``chunk_size``, ``use_checkpoint``.

    Returns:
        LossOutput(total = sum over chunks, count = valid chunks, components = sums of kl,
        top1_agree (argmax q|_S == argmax p^T|_S), proj_mass_in_topk (share of the projected
        student mass inside S), teacher_mass_in_topk, teacher_mass_unreachable). >= 0; 0 when
        q|_S == p^T|_S.
    """
    options.check("pkl", PKL_READS)
    w_indices, w_weights = projection
    if w_indices.shape[0] != student_logits.shape[-1]:
        raise ValueError(
            f"W has {w_indices.shape[0]} rows, student head {student_logits.shape[-1]}"
        )
    idx = w_indices.long()
    # The column-restricted kernel (projection_ops) computes the forward KL with "mean" student
    # chunks on one column set per micro-batch: the xbench semantics with top_k_scope=microbatch
    # and chunk_method=mean, and the authors'. Everything else takes the generic path.
    kernel = (
        options.fast
        and options.beta == 0.0
        and (
            options.authors
            or (options.top_k_scope == "microbatch" and options.chunk_method == "mean")
        )
    )
    if options.authors and not kernel:
        return _pkl_authors(student_logits, teacher_logits, view, (idx, w_weights), options)
    if kernel:
        v_t = teacher_logits.shape[-1]
        sel: dict[str, Any] = (
            {
                "columns": max_logit_columns(teacher_logits, options.top_k),
                "teacher_log_means": True,
                "additive_floor": True,
            }
            if options.authors
            else {"reach": reachable_columns(idx, w_weights, v_t)}
        )
        sums, n = projected_kl_sums(
            student_logits, teacher_logits, view, (idx, w_weights), options=options, **sel
        )
        return _pkl_output(sums, n, student_logits, w_weights)
    columns, reach, unreach = column_sets(teacher_logits, view, (idx, w_weights), options)

    def term(lq_s: Tensor, lq_t: Tensor, w: Tensor) -> dict[str, Tensor]:
        return projected_kl_terms(
            lq_s, lq_t, idx, w, columns, options.top_k, options.temperature, options.beta,
            reach, unreach,
        )  # fmt: skip

    sums, n = cross_tokenizer_sums(
        student_logits, teacher_logits, view, term, (w_weights,), options=options
    )
    return _pkl_output(sums, n, student_logits, w_weights)


def _pkl_output(
    sums: dict[str, Tensor], n: int, student_logits: Tensor, w_weights: Tensor
) -> LossOutput:
    """LossOutput of P-KL's per-slice sums (a zero keeping both graphs when nothing is valid)."""
    count = torch.tensor(n, device=student_logits.device)
    if not sums:
        zero = student_logits.sum() * 0.0 + w_weights.sum() * 0.0
        return LossOutput(zero, count, {"kl": zero.detach()})
    total = sums.pop("loss")
    return LossOutput(total, count, {k: v.detach() for k, v in sums.items()})


def max_logit_columns(teacher_logits: Tensor, top_k: int) -> Tensor:
    """The authors' column rule: the k teacher ids with the highest logit anywhere in the
    micro-batch (every position, padding included), sorted; all ids when k >= V_T."""
    v_t = teacher_logits.shape[-1]
    if top_k >= v_t:
        return torch.arange(v_t, device=teacher_logits.device)
    with torch.no_grad():
        best = teacher_logits.detach().reshape(-1, v_t).amax(0)  # (V_T,)
        return torch.sort(best.topk(top_k).indices).values


def _pkl_authors(
    student_logits: Tensor,
    teacher_logits: Tensor,
    view: ChunkView,
    projection: tuple[Tensor, Tensor],
    options: ChunkOptions,
) -> LossOutput:
    """P-KL with the authors' column rule and teacher averaging (see :func:`pkl_loss`)."""
    idx, w_weights = projection
    v_t = teacher_logits.shape[-1]
    temperature, top_k, beta = options.temperature, options.top_k, options.beta
    columns = max_logit_columns(teacher_logits, top_k)

    def teacher_side(rows: Tensor, t_idx: ChunkIndex, start: int, end: int) -> Tensor:
        z = rows[:, columns].float() / temperature  # (P, k)
        lp = F.log_softmax(z, dim=-1)  # per token, within the k columns
        rows_idx = t_idx.local_rows(start, end)
        counts = t_idx.counts(start, end).to(lp.dtype)
        return lp.new_zeros(end - start, lp.shape[1]).index_add(0, rows_idx, lp) / counts[:, None]

    def term(lq_s: Tensor, lq_t: Tensor, w: Tensor) -> dict[str, Tensor]:
        return projected_kl_terms(
            lq_s, lq_t, idx, w, columns, top_k, temperature, beta,
            teacher_restricted=True, v_t=v_t, additive_floor=True,
        )  # fmt: skip

    # The student side's chunks are always "mean" here (chunk_method is unused by the authors').
    sums, n = cross_tokenizer_sums(
        student_logits, teacher_logits, view, term, (w_weights,),
        options=replace(options, chunk_method="mean"), teacher_fn=teacher_side,
    )  # fmt: skip
    return _pkl_output(sums, n, student_logits, w_weights)
