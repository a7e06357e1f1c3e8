"""Chunk distributions: per-position logits -> one distribution per aligned chunk.

Position convention (the trap "reading chunk logits one position late"): the logits at position p
predict the token at p + 1, so a chunk whose tokens sit at positions i..j is predicted by the logits
at positions i-1..j-1. A loss chunk never contains position 0 (nothing predicts it); the aligner's
``chunk_mask`` already excludes such chunks and :func:`build_chunk_index` rejects them.

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

Indexing is vectorized: a :class:`ChunkIndex` lists, for every token of every valid chunk, the flat
row (b * T + p - 1) of the logits that predicts it and the chunk's row among the valid chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from xbench.losses.base import sliced_sums

__all__ = [
    "CHUNK_METHODS",
    "ChunkIndex",
    "build_chunk_index",
    "chunk_log_probs",
    "cross_tokenizer_sums",
]

ChunkMethod = Literal["mean", "chain"]
CHUNK_METHODS: tuple[str, ...] = ("mean", "chain")


@dataclass(frozen=True)
class ChunkIndex:
    """Flat token lists of the valid chunks of one side (student or teacher) of a batch.

    Attributes:
        num_chunks: N, number of valid chunks (``chunk_mask.sum()``), rows ordered (b, c).
        pred_row: (P,) long, flat row ``b * T + p - 1`` of the logits predicting each chunk token.
        chunk_row: (P,) long, row in 0..N-1 of the token's chunk; non-decreasing.
        token: (P,) long, the token id (zeros when ids were not given; only ``chain`` reads it).
        is_last: (P,) bool, the token is the last one of its chunk.
        offsets: (N + 1,) long, CSR offsets: chunk r owns tokens ``offsets[r]:offsets[r+1]``.
    """

    num_chunks: int
    pred_row: Tensor
    chunk_row: Tensor
    token: Tensor
    is_last: Tensor
    offsets: Tensor

    @property
    def single_token(self) -> bool:
        """Every chunk has exactly one token on this side (fast path: no aggregation)."""
        return int(self.pred_row.numel()) == self.num_chunks


def build_chunk_index(
    token_chunk: Tensor, chunk_mask: Tensor, token_ids: Tensor | None = None
) -> ChunkIndex:
    """Index the tokens of the valid chunks of one side.

    Args:
        token_chunk: (B, T) long, chunk id of each token, -1 = in no loss chunk.
        chunk_mask: (B, C) bool, chunk enters the loss.
        token_ids: (B, T) long token ids, needed by ``chain``.

    Raises:
        ValueError: a valid chunk contains position 0 or has no token on this side.
    """
    B, T = token_chunk.shape  # (B, T)
    C = chunk_mask.shape[1]
    device = token_chunk.device
    row_of = torch.cumsum(chunk_mask.reshape(-1).long(), 0).reshape(B, C) - 1  # (B, C)
    n = int(chunk_mask.sum())
    cid = token_chunk.clamp(0, max(C - 1, 0))
    in_loss = (token_chunk >= 0) & chunk_mask.gather(1, cid) if C > 0 else token_chunk < -1
    if bool(in_loss[:, 0].any()):
        raise ValueError("a loss chunk contains position 0, which no logits predict")
    b_idx, p_idx = torch.nonzero(in_loss, as_tuple=True)  # row-major: (b, p) order
    chunk_row = row_of[b_idx, token_chunk[b_idx, p_idx]]  # (P,)
    # Chunk ids increase along the sequence (contract), so rows are already sorted; a stable sort
    # keeps the code correct if an aligner ever emits them out of order.
    if chunk_row.numel() > 1 and bool((chunk_row[1:] < chunk_row[:-1]).any()):
        order = torch.sort(chunk_row, stable=True).indices
        b_idx, p_idx, chunk_row = b_idx[order], p_idx[order], chunk_row[order]
    counts = torch.bincount(chunk_row, minlength=n)  # (N,)
    if n and bool((counts == 0).any()):
        raise ValueError("a valid chunk has no token on one side")
    offsets = torch.zeros(n + 1, dtype=torch.long, device=device)
    offsets[1:] = torch.cumsum(counts, 0)
    is_last = torch.zeros_like(chunk_row, dtype=torch.bool)
    if n:
        is_last[offsets[1:] - 1] = True
    token = token_ids[b_idx, p_idx].long() if token_ids is not None else torch.zeros_like(chunk_row)
    return ChunkIndex(n, b_idx * T + p_idx - 1, chunk_row, token, is_last, offsets)


def chunk_log_probs(
    flat_logits: Tensor,
    index: ChunkIndex,
    start: int,
    end: int,
    method: ChunkMethod = "mean",
    temperature: float = 1.0,
) -> Tensor:
    """Log chunk distributions of valid chunks ``start..end-1`` (see module docstring).

    Args:
        flat_logits: (B * T, V) logits (a view of (B, T, V)); computed in float32.
        index: the side's :class:`ChunkIndex`.
        start, end: chunk-row range.
        method: ``"mean"`` or ``"chain"``.
        temperature: softmax temperature T (z / T).

    Returns:
        (end - start, V) float32 log q, finite everywhere.
    """
    lo, hi = int(index.offsets[start]), int(index.offsets[end])
    lp = F.log_softmax(flat_logits[index.pred_row[lo:hi]].float() / temperature, dim=-1)  # (P, V)
    n = end - start
    if hi - lo == n:  # one token per chunk: the chunk distribution is the position's
        return lp
    rows = index.chunk_row[lo:hi] - start  # (P,)
    if method == "mean":
        counts = (index.offsets[start + 1 : end + 1] - index.offsets[start:end]).to(lp.dtype)
        probs = lp.new_zeros(n, lp.shape[1]).index_add(0, rows, lp.exp())  # (n, V)
        probs = probs / counts[:, None]
        log_q = torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
        return log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)
    if method == "chain":
        last = index.is_last[lo:hi]  # (P,)
        tok_lp = lp.gather(1, index.token[lo:hi, None]).squeeze(1)  # (P,)
        prefix = lp.new_zeros(n).index_add(0, rows[~last], tok_lp[~last])  # (n,)
        return lp[last] + prefix[:, None]
    raise ValueError(f"unknown chunk method {method!r}; choose from {CHUNK_METHODS}")


def cross_tokenizer_sums(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_chunk: Tensor,
    teacher_chunk: Tensor,
    chunk_mask: Tensor,
    term_fn: Callable[..., dict[str, Tensor]],
    extra: tuple[Tensor, ...] = (),
    *,
    chunk_method: ChunkMethod = "mean",
    temperature: float = 1.0,
    student_ids: Tensor | None = None,
    teacher_ids: Tensor | None = None,
    chunk_size: int | None = 256,
    use_checkpoint: bool = True,
) -> tuple[dict[str, Tensor], int]:
    """Shared driver of the chunk-level losses: slice chunks, build both sides, apply ``term_fn``.

    ``term_fn(log_q_s (n, V_S), log_q_t (n, V_T), *extra) -> {name: scalar sum}`` must return the
    same keys on every slice. Chunks are processed ``chunk_size`` at a time (checkpointed under
    autograd), so the (n, V) temporaries never exceed ``chunk_size`` rows.

    Returns:
        ``(sums, n_chunks)``; sums is empty when there is no valid chunk.
    """
    if chunk_method == "chain" and (student_ids is None or teacher_ids is None):
        raise ValueError("chunk_method='chain' needs student_ids and teacher_ids")
    s_idx = build_chunk_index(student_chunk, chunk_mask, student_ids)
    t_idx = build_chunk_index(teacher_chunk, chunk_mask, teacher_ids)
    n = s_idx.num_chunks
    s_flat = student_logits.reshape(-1, student_logits.shape[-1])  # (B*Ts, V_S)
    t_flat = teacher_logits.reshape(-1, teacher_logits.shape[-1])  # (B*Tt, V_T)
    keys: list[str] = []

    def run(start: int, end: int, s: Tensor, t: Tensor, *ex: Tensor) -> tuple[Tensor, ...]:
        lq_s = chunk_log_probs(s, s_idx, start, end, chunk_method, temperature)
        lq_t = chunk_log_probs(t, t_idx, start, end, chunk_method, temperature)
        out = term_fn(lq_s, lq_t, *ex)
        if not keys:
            keys.extend(sorted(out))
        return tuple(out[k] for k in keys)

    sums = sliced_sums(run, n, chunk_size, (s_flat, t_flat, *extra), use_checkpoint)
    if sums is None:
        return {}, 0
    return dict(zip(keys, sums, strict=True)), n
