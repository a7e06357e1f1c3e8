"""Chunk distributions: per-position logits -> one distribution per aligned chunk.

Position convention (the trap "reading chunk logits one position late"): the logits at position p
predict the token at p + 1, so a chunk whose tokens sit at positions i..j is predicted by the logits
at positions i-1..j-1. A loss chunk never contains position 0 (nothing predicts it); the aligner's
``chunk_mask`` already excludes such chunks and :func:`xbench.losses.view.build_chunk_index`
rejects them.

Two chunk distributions, selected by name and recorded by the caller in its config:

``mean`` (both public implementations)
    q_c = normalize( (1/n) * sum_{k=i}^{j} softmax(z_{k-1} / T) ), n = j - i + 1.
    The mean of probability vectors already sums to 1; the explicit renormalization only removes
    rounding. Computed in probability space (an ``index_add`` of the n vectors), logged with a floor
    at the smallest normal float so that log q is finite.

``chain`` (the chain-rule product of the write-up)
    The probability that the model emits the chunk's observed prefix y_i..y_{j-1} and then token v:
        log q_c[v] = sum_{k=i}^{j-1} log p_{k-1}(y_k) + log p_{j-1}(v),   p_k = softmax(z_k / T).
    This is the joint probability of the event "prefix, then v" under the model's own chain rule,
    computed entirely in log space (a sum of gathered log-probabilities plus one log-softmax row).
    It is deliberately *not* renormalized: its mass is P(prefix) <= 1, and a renormalized version
    would just be the last predicting position's distribution. It matches TRL GOLD's "bayesian"
    merge strategy (the last position's full distribution times the scalar probabilities of the
    earlier actual tokens). Losses that renormalize (P-KL over its top-k columns) only see the
    relative values, so under P-KL ``chain`` equals "the last predicting position"; losses on
    sub-vectors (GOLD/H-KL common KL, ULD) also see the prefix factor. For one-token chunks both
    methods equal the plain next-token distribution.

``logmean`` (the authors' NeMo RL code, used by ``kd.semantics=authors``)
    log q_c = (1/n) * sum_{k=i}^{j} log softmax(z_{k-1} / T): the mean of log-probabilities, not
    renormalised (exp(log q_c) is a geometric mean and sums to <= 1).

Indexing is vectorized: a :class:`xbench.losses.view.ChunkIndex` lists, for every token of every
valid chunk, the flat row (b * T + p - 1) of the logits that predicts it and the chunk's row among
the valid chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from xbench.losses.view import CHUNK_METHODS, ChunkIndex, ChunkMethod, ChunkOptions, ChunkView

__all__ = ["cross_tokenizer_sums", "rows_log_probs", "token_slices", "with_precomputed_grads"]


def _scaled_rows(rows: Tensor, temperature: float) -> Tensor:
    """float32 ``rows / T``; skips the divide at T = 1, divides in place on a private copy."""
    z = rows.float()
    if temperature == 1.0:
        return z
    if z.requires_grad or z.data_ptr() == rows.data_ptr():
        return z / temperature
    return z.div_(temperature)


def rows_log_probs(
    rows: Tensor,
    index: ChunkIndex,
    start: int,
    end: int,
    method: ChunkMethod = "mean",
    temperature: float = 1.0,
) -> Tensor:
    """(end - start, V) float32 log chunk distributions of chunks ``start..end-1`` (module
    docstring), finite everywhere, from their predicting rows.

    ``rows`` is ``flat_logits[index.pred_row[lo:hi]]`` (P, V), ``(lo, hi) = index.span(start,
    end)``. Without autograd (the teacher side) the arithmetic runs in place.

    ``mean``: q = normalize(sum_k softmax(z_k)) -- the 1/n of the mean cancels in the
    normalization, which divides by the row sum (the original mean renormalized, fewer passes).
    """
    z = _scaled_rows(rows, temperature)
    n = end - start
    if z.shape[0] == n:  # one token per chunk: the chunk distribution is the position's
        return F.log_softmax(z, dim=-1)
    lo = int(index.offsets[start])
    rows_idx = index.local_rows(start, end)  # (P,)
    grad = torch.is_grad_enabled() and z.requires_grad
    tiny = torch.finfo(z.dtype).tiny
    if method == "mean":
        p = F.softmax(z, dim=-1)  # (P, V)
        probs = p.new_zeros(n, p.shape[1]).index_add_(0, rows_idx, p)  # (n, V) sum of the rows
        log_norm = probs.sum(-1, keepdim=True).log()  # (n, 1)
        if grad:
            return torch.log(probs.clamp_min(tiny)) - log_norm
        return probs.clamp_min_(tiny).log_().sub_(log_norm)
    if method == "logmean":
        lp = F.log_softmax(z, dim=-1)  # (P, V)
        counts = index.counts(start, end).to(lp.dtype)
        summed = lp.new_zeros(n, lp.shape[1]).index_add(0, rows_idx, lp)  # (n, V)
        return summed / counts[:, None]
    if method == "chain":
        lp = F.log_softmax(z, dim=-1)
        last = index.is_last[lo : lo + z.shape[0]]  # (P,)
        tok_lp = lp.gather(1, index.token[lo : lo + z.shape[0], None]).squeeze(1)  # (P,)
        prefix = lp.new_zeros(n).index_add(0, rows_idx[~last], tok_lp[~last])  # (n,)
        out = lp[last]
        return out + prefix[:, None] if grad else out.add_(prefix[:, None])
    raise ValueError(f"unknown chunk method {method!r}; choose from {CHUNK_METHODS}")


def token_slices(
    s_idx: ChunkIndex, t_idx: ChunkIndex, max_tokens: int | None
) -> list[tuple[int, int]]:
    """Consecutive chunk ranges holding at most ``max_tokens`` predicting rows on either side.

    Slicing by token count (not chunk count) bounds the (rows, V) temporaries of both sides like a
    same-tokenizer loss sliced by positions; a chunk longer than ``max_tokens`` forms its own slice.
    ``None`` or ``<= 0``: one slice.
    """
    n = s_idx.num_chunks
    if n == 0:
        return []
    if not max_tokens or max_tokens <= 0:
        return [(0, n)]
    so, to = s_idx.offsets, t_idx.offsets
    out: list[tuple[int, int]] = []
    start = 0
    while start < n:
        e_s = int(torch.searchsorted(so, so[start] + max_tokens, right=True)) - 1
        e_t = int(torch.searchsorted(to, to[start] + max_tokens, right=True)) - 1
        end = min(max(min(e_s, e_t), start + 1), n)
        out.append((start, end))
        start = end
    return out


class _EagerSlices(torch.autograd.Function):
    """Sum of per-slice outputs whose gradients are computed slice by slice *during the forward*.

    Why: an activation checkpoint keeps memory at one slice but runs every slice's forward twice.
    Here each slice builds its small graph, is differentiated at once (``torch.autograd.grad``) and
    freed; the input gradients are accumulated into buffers that backward hands out (scaled by the
    incoming gradient). Same memory bound as the checkpoint, no recomputation. Exactly one output
    (the loss) may carry a gradient; higher-order gradients are not supported.
    """

    @staticmethod
    def forward(
        ctx: Any, compute: Callable[[], tuple[tuple[Tensor, ...], int, list]], *tensors: Tensor
    ) -> tuple[Tensor, ...]:
        sums, diff_k, grads = compute()
        ctx.diff_k, ctx.grads = diff_k, grads
        ctx.mark_non_differentiable(*(s for k, s in enumerate(sums) if k != diff_k))
        ctx.set_materialize_grads(False)
        return sums

    @staticmethod
    def backward(ctx: Any, *gouts: Tensor | None):
        g = gouts[ctx.diff_k]
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("backward ran twice through an eagerly differentiated loss")
        res: list[Tensor | None] = [None]
        for buf in grads:
            if buf is None or g is None:
                res.append(None)
            elif g.numel() == 1 and float(g) == 1.0:
                res.append(buf)
            else:
                res.append(buf.mul_(g.to(buf.dtype)))
        return tuple(res)


def with_precomputed_grads(
    compute: Callable[[], tuple[tuple[Tensor, ...], int, list]], *tensors: Tensor
) -> tuple[Tensor, ...]:
    """The sums of ``compute() -> (sums, diff_k, grads)``, differentiable in output ``diff_k``
    only: backward hands out ``grads`` (one per tensor, None = no gradient) scaled by the
    incoming gradient. For kernels that compute their gradients during the forward."""
    return _EagerSlices.apply(compute, *tensors)


def cross_tokenizer_sums(
    student_logits: Tensor,
    teacher_logits: Tensor,
    view: ChunkView,
    term_fn: Callable[..., dict[str, Tensor]],
    extra: tuple[Tensor, ...] = (),
    *,
    options: ChunkOptions,
    teacher_fn: Callable[..., Tensor] | None = None,
) -> tuple[dict[str, Tensor], int]:
    """Shared driver of the chunk-level losses: slice chunks, build both sides, apply ``term_fn``.

    ``term_fn(log_q_s (n, V_S), log_q_t (n, V_T), *extra) -> {name: scalar sum}`` must return the
    same keys on every slice. Slices hold at most ``options.chunk_size`` predicting rows (tokens)
    per side (:func:`token_slices`), so the (rows, V) temporaries never exceed that many rows.
    Reads ``options.chunk_method``, ``temperature``, ``chunk_size`` and ``use_checkpoint``.

    ``teacher_fn(rows (P_t, V_T), t_index, start, end)`` (optional) replaces the teacher side's
    :func:`rows_log_probs` (e.g. P-KL needs only its top-k columns).

    Under autograd with ``options.use_checkpoint`` (default) and more than one slice, each slice is
    differentiated right after its forward and freed (:class:`_EagerSlices`): the memory of an
    activation checkpoint without its second forward; ``use_checkpoint=False`` keeps one graph.

    Returns:
        ``(sums, n_chunks)``; sums is empty when there is no valid chunk.
    """
    chunk_method, temperature = options.chunk_method, options.temperature
    s_idx, t_idx = view.indices(chunk_method)
    n = s_idx.num_chunks
    if n == 0:
        return {}, 0
    s_flat = student_logits.reshape(-1, student_logits.shape[-1])  # (B*Ts, V_S)
    t_flat = teacher_logits.reshape(-1, teacher_logits.shape[-1])  # (B*Tt, V_T)
    keys: list[str] = []
    slices = token_slices(s_idx, t_idx, options.chunk_size)

    def sides(start: int, end: int, rs: Tensor, rt: Tensor) -> tuple[Tensor, Tensor]:
        lq_s = rows_log_probs(rs, s_idx, start, end, chunk_method, temperature)
        if teacher_fn is not None:
            return lq_s, teacher_fn(rt, t_idx, start, end)
        return lq_s, rows_log_probs(rt, t_idx, start, end, chunk_method, temperature)

    def rows_of(idx: ChunkIndex, flat: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
        lo, hi = idx.span(start, end)
        sel = idx.pred_row[lo:hi]
        return sel, flat[sel]

    def run(start: int, end: int, s: Tensor, t: Tensor, *ex: Tensor) -> tuple[Tensor, ...]:
        lq_s, lq_t = sides(start, end, rows_of(s_idx, s, start, end)[1],
                           rows_of(t_idx, t, start, end)[1])  # fmt: skip
        out = term_fn(lq_s, lq_t, *ex)
        if not keys:
            keys.extend(sorted(out))
        return tuple(out[k] for k in keys)

    tensors = (s_flat, t_flat, *extra)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if not (needs_grad and options.use_checkpoint and len(slices) > 1):
        acc: tuple[Tensor, ...] | None = None
        for start, end in slices:
            o = run(start, end, *tensors)
            acc = o if acc is None else tuple(a + b for a, b in zip(acc, o, strict=True))
        assert acc is not None
        return dict(zip(keys, acc, strict=True)), n

    def compute() -> tuple[tuple[Tensor, ...], int, list]:
        bufs: list[Tensor | None] = [None] * len(tensors)
        acc: list[Tensor] | None = None
        diff_k = -1
        for start, end in slices:
            with torch.enable_grad():
                sel_s, rs = rows_of(s_idx, s_flat.detach(), start, end)
                sel_t, rt = rows_of(t_idx, t_flat.detach(), start, end)
                leaves = [rs.requires_grad_(s_flat.requires_grad),
                          rt.requires_grad_(t_flat.requires_grad),
                          *(e.detach().requires_grad_(e.requires_grad) for e in extra)]  # fmt: skip
                lq_s, lq_t = sides(start, end, leaves[0], leaves[1])
                out = term_fn(lq_s, lq_t, *leaves[2:])
                if not keys:
                    keys.extend(sorted(out))
                vals = [out[k] for k in keys]
                diff = [k for k, v in enumerate(vals) if v.requires_grad]
                if len(diff) > 1:
                    raise RuntimeError(f"only one output may carry a gradient, got {diff}")
                if diff:
                    diff_k = diff[0]
                    want = [i for i, x in enumerate(leaves) if x.requires_grad]
                    gs = torch.autograd.grad(vals[diff_k], [leaves[i] for i in want],
                                             allow_unused=True)  # fmt: skip
                    for i, gi in zip(want, gs, strict=True):
                        if gi is None:
                            continue
                        if bufs[i] is None:
                            bufs[i] = torch.zeros_like(tensors[i], dtype=tensors[i].dtype)
                        if i < 2:
                            bufs[i].index_add_(0, sel_s if i == 0 else sel_t, gi.to(bufs[i].dtype))
                        else:
                            bufs[i].add_(gi)
                        del gi
                    del gs
                vals = [v.detach() for v in vals]
                del out, lq_s, lq_t, leaves, rs, rt
            acc = vals if acc is None else [a + v for a, v in zip(acc, vals, strict=True)]
        assert acc is not None
        if diff_k < 0:
            diff_k = 0
        return tuple(acc), diff_k, bufs

    sums = _EagerSlices.apply(compute, *tensors)
    return dict(zip(keys, sums, strict=True)), n
