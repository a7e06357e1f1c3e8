"""What every cross-tokenizer loss reads about a batch, and the options they share.

* :class:`ChunkView`: the aligned chunks of one micro-batch (the ``PairAlignment`` fields) and the
  token ids of both sides. A chunk is a span of student tokens and a span of teacher tokens that
  decode to the same text; ``chunk_mask`` says which chunks enter the loss.
* :class:`ChunkIndex` (:meth:`ChunkView.indices`): one side's valid chunks as flat token lists,
  the form every chunk-level computation reads.
* :class:`ChunkOptions`: the knobs of the chunk-level losses (temperature, chunk distribution,
  slicing, divergence, conventions), each with its default stated once here. A loss refuses a
  field it does not read when it is set away from its default (:meth:`ChunkOptions.check`).

Position convention: the logits at position p predict the token at p + 1, so the chunk tokens at
positions i..j are predicted by the logits at positions i-1..j-1 (:func:`build_chunk_index`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "CHUNK_METHODS",
    "SHARED_READS",
    "ChunkIndex",
    "ChunkMethod",
    "ChunkOptions",
    "ChunkView",
    "TopKScope",
    "build_chunk_index",
]

ChunkMethod = Literal["mean", "chain", "logmean"]
CHUNK_METHODS: tuple[str, ...] = ("mean", "chain", "logmean")
TopKScope = Literal["microbatch", "chunk"]


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

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Token range ``[lo, hi)`` of chunks ``start..end-1``."""
        return int(self.offsets[start]), int(self.offsets[end])

    def local_rows(self, start: int, end: int) -> Tensor:
        """(hi - lo,) row of each token of chunks ``start..end-1`` among those chunks (0-based)."""
        lo, hi = self.span(start, end)
        return self.chunk_row[lo:hi] - start

    def counts(self, start: int, end: int) -> Tensor:
        """(end - start,) long, tokens of each of chunks ``start..end-1``."""
        return self.offsets[start + 1 : end + 1] - self.offsets[start:end]


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


@dataclass(frozen=True)
class ChunkView:
    """The aligned chunks of one micro-batch, as every cross-tokenizer loss reads them.

    Attributes:
        student_chunk: (B, Ts) long, chunk id of each student token, -1 = in no loss chunk.
        teacher_chunk: (B, Tt) long, the same for the teacher's tokens.
        chunk_mask: (B, C) bool, the chunk enters the loss (chunk ids increase along a sequence).
        student_ids: (B, Ts) long student token ids (read by ``chunk_method="chain"`` only).
        teacher_ids: (B, Tt) long teacher token ids (likewise).
    """

    student_chunk: Tensor
    teacher_chunk: Tensor
    chunk_mask: Tensor
    student_ids: Tensor | None = None
    teacher_ids: Tensor | None = None

    def indices(self, chunk_method: ChunkMethod = "mean") -> tuple[ChunkIndex, ChunkIndex]:
        """Both sides' :class:`ChunkIndex` (student, teacher); the one chunk-index setup.

        Raises:
            ValueError: ``chain`` without the token ids of both sides.
        """
        if chunk_method == "chain" and (self.student_ids is None or self.teacher_ids is None):
            raise ValueError(
                "chunk_method='chain' needs the token ids: build the ChunkView with "
                "student_ids and teacher_ids."
            )
        return (
            build_chunk_index(self.student_chunk, self.chunk_mask, self.student_ids),
            build_chunk_index(self.teacher_chunk, self.chunk_mask, self.teacher_ids),
        )

    def teacher_index(self) -> ChunkIndex:
        """The teacher side's :class:`ChunkIndex` alone (P-KL's column choice reads only it)."""
        return build_chunk_index(self.teacher_chunk, self.chunk_mask, self.teacher_ids)


@dataclass(frozen=True)
class ChunkOptions:
    """Knobs of the chunk-level losses; each loss reads the fields its docstring names.

    Attributes:
        temperature: T, both sides' logits are divided by it before the softmax.
        chunk_method: chunk distribution, ``mean`` | ``chain`` | ``logmean`` (:mod:`.chunks`).
        chunk_size: at most this many predicting rows (tokens) per side in one slice, which
            bounds the (rows, V) temporaries; ``None`` or ``<= 0``: one slice.
        use_checkpoint: under autograd and several slices, differentiate slice by slice during
            the forward (the memory of one slice); False keeps one graph.
        fast: the closed-form kernel (:mod:`.hybrid_ops`, :mod:`.projection_ops`) where it
            applies; same value and gradients. False forces the generic autograd path.
        beta: divergence as a generalized-JSD beta (0 = forward KL(p_T || p_S), the paper's;
            1 = reverse KL; :func:`xbench.losses.kd.divergence_terms`).
        weights: hybrid term weights, ``"adaptive"`` (w_common = |pairs| / V_T) or
            ``(w_common, w_uncommon)``.
        truncate: ULD compares the top ``truncate`` sorted ranks only, no padding (the authors':
            8192); None compares all, zero-padded.
        t2: multiply ULD / hybrid terms by T^2 (the authors' convention; P-KL always has it).
        top_k: P-KL's column set S holds at most this many teacher ids.
        top_k_scope: ``microbatch`` (one S per micro-batch) or ``chunk`` (each chunk's own).
        authors: P-KL / X-Token with the formulas of the authors' code (:mod:`.presets`).
    """

    temperature: float = 1.0
    chunk_method: ChunkMethod = "mean"
    chunk_size: int | None = 256
    use_checkpoint: bool = True
    fast: bool = True
    beta: float = 0.0
    weights: str | tuple[float, float] = "adaptive"
    truncate: int | None = None
    t2: bool = False
    top_k: int = 8192
    top_k_scope: TopKScope = "microbatch"
    authors: bool = False

    @property
    def factor(self) -> float:
        """T^2 under ``t2``, else 1: what the ULD and hybrid terms are multiplied by."""
        return self.temperature**2 if self.t2 else 1.0

    def check(self, loss: str, reads: Collection[str]) -> ChunkOptions:
        """Refuse a field set away from its default that ``loss`` does not read; returns self.

        Raises:
            ValueError: one sentence naming the field and the fix.
        """
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in reads and value != f.default:
                raise ValueError(
                    f"ChunkOptions.{f.name}={value!r} is not read by the {loss} loss; leave it "
                    f"at its default ({f.default!r}) or use a loss that reads it."
                )
        return self


# Fields every chunk loss reads (how chunk distributions are built and sliced).
SHARED_READS = frozenset(("temperature", "chunk_method", "chunk_size", "use_checkpoint", "fast"))
